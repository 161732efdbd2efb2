# Runs under MicroPython (not pytest): the bundle-trust core on fixtures made by CPython.
# test_micropython.py prepends ROOT, MAN, BAD (envelope bytes) and runs this file.
import hashlib
import sys

from agent.core import envelope, keyring, manifest, policy, semver, timefmt
from agent.core.errors import Downgrade, MalformedBundle, UnknownKey, WrongModel


def vf(key, sig, data):
    # Stand-in verifier: MicroPython has no Ed25519/ECDSA; the port is injected on devices.
    return hashlib.sha256(data + key.public_der).digest() == sig


def expect(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise SystemExit("expected %s" % exc.__name__)


assert timefmt.format(timefmt.parse("2026-11-24T23:00:00Z")) == "2026-11-24T23:00:00Z"
assert semver.compare("1.0.0-rc.1", "1.0.0") == -1
assert semver.compare("1.0.0-beta.11", "1.0.0-beta.2") == 1
root = keyring.load_trusted(envelope.parse_envelope(ROOT), vf)  # noqa: F821
env = envelope.parse_envelope(MAN, envelope.MANIFEST_TYPE)  # noqa: F821
m = manifest.parse_manifest(keyring.verify_release(root, env, vf))
assert m.version == "1.2.0-rc.1" and m.payloads[0].size == 3
good = {"model": "ACME", "hardware_revision": "b"}
policy.check_manifest(m, good, 1800000000, 2)
expect(WrongModel, policy.check_manifest, m, {"model": "X", "hardware_revision": "b"}, 0, 0)
expect(Downgrade, policy.check_manifest, m, good, 1800000000, 3)
expect(UnknownKey, keyring.verify_release, root, envelope.parse_envelope(BAD), vf)  # noqa: F821
for junk in (b"", b"{", b"[1]", b"\xff", b'{"format": 1}', b"[" * 5000):
    expect(MalformedBundle, manifest.parse_manifest, junk)
print("MICROPYTHON CORE OK", sys.implementation.name)
