"""`charger-update root create|sign|show|update`: the signed keyring (root) of release keys.

A root lists keys and two roles, `root` (signs roots) and `release` (signs bundles), each with
a threshold. Rotation: create version N+1, sign it with a threshold of N's root keys and of
its own; devices apply it with `root update`.

The signing and trust modules are imported inside the commands: every `charger-update` run,
`--help` included, registers this module (start-up cost, issue 12).
"""

import json
import sys
import time

from agent import config as config_mod
from agent.commands._args import add_expires, positive_int, read_input, write_output
from agent.commands._text import printable
from agent.core import keyring, timefmt
from agent.core.envelope import ROOT_TYPE, b64encode, parse_envelope
from agent.core.errors import UpdateError


def register(subparsers):
    p = subparsers.add_parser("root", help="create, sign, show and apply root key metadata")
    sub = p.add_subparsers(dest="root_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="write a new root (unsigned unless --sign)")
    c.add_argument("--root-key", action="append", required=True, metavar="PUB")
    c.add_argument("--release-key", action="append", required=True, metavar="PUB")
    c.add_argument("--threshold", type=positive_int, help="sets both role thresholds")
    c.add_argument("--root-threshold", type=positive_int, default=1)
    c.add_argument("--release-threshold", type=positive_int, default=1)
    c.add_argument("--version", type=positive_int, default=1, dest="root_version")
    add_expires(c, 365)
    c.add_argument("--sign", action="append", default=[], metavar="KEY")
    c.add_argument("-o", "--out", required=True)
    c.set_defaults(func=create)
    s = sub.add_parser("sign", help="add signatures to a root file")
    s.add_argument("file")
    s.add_argument("--key", action="append", required=True)
    s.add_argument("-o", "--out", help="default: rewrite FILE")
    s.set_defaults(func=sign)
    w = sub.add_parser("show", help="print a root and whether it verifies")
    w.add_argument("file")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=show)
    u = sub.add_parser("update", help="rotate this device's trusted root (needs --config)")
    u.add_argument("files", nargs="+", metavar="ROOT", help="root versions N+1, N+2, ...")
    u.set_defaults(func=update)


def _key_entry(key):
    from agent.trust import crypto

    return {"keytype": crypto.keytype_of(key), "public": b64encode(crypto.public_der(key))}


def root_fields(
    root_keys, release_keys, root_threshold, release_threshold, version, expires, created=None
):
    """The root's JSON fields; `created` (epoch s, optional) becomes a device's floor of time."""
    from agent.trust import crypto

    keys = dict((crypto.keyid(k), _key_entry(k)) for k in list(root_keys) + list(release_keys))
    fields = {
        "type": "root",
        "version": version,
        "expires": timefmt.format(expires),
        "keys": keys,
        "roles": {
            "root": {"keyids": [crypto.keyid(k) for k in root_keys], "threshold": root_threshold},
            "release": {
                "keyids": [crypto.keyid(k) for k in release_keys],
                "threshold": release_threshold,
            },
        },
    }
    if created is not None:
        fields["created"] = timefmt.format(created)
    return fields


def create(args):
    from agent.bundle.writer import sign_envelope
    from agent.trust import crypto

    if args.threshold is not None:
        args.root_threshold = args.release_threshold = args.threshold
    fields = root_fields(
        [crypto.load_public(p) for p in args.root_key],
        [crypto.load_public(p) for p in args.release_key],
        args.root_threshold,
        args.release_threshold,
        args.root_version,
        args.expires,
        created=int(time.time()),
    )
    raw = json.dumps(fields, indent=1, sort_keys=True).encode() + b"\n"
    keyring.parse_root(raw)  # refuse to write a root a device would refuse
    envelope = sign_envelope(ROOT_TYPE, raw, [crypto.load_private(k) for k in args.sign])
    write_output(args.out, envelope.encode())
    print("wrote root version %d to %s" % (args.root_version, args.out))
    return 0


def _load(path):
    return parse_envelope(read_input(path, "root"), ROOT_TYPE)


def sign(args):
    from agent.trust import crypto

    envelope = _load(args.file)
    for path in args.key:
        key = crypto.load_private(path)
        envelope = envelope.with_signature(
            crypto.keyid(key), crypto.sign(key, envelope.signed_bytes)
        )
        print("signed by %s" % crypto.keyid(key))
    write_output(args.out or args.file, envelope.encode())
    return 0


def show(args):
    from agent.trust import crypto

    envelope = _load(args.file)
    root = keyring.parse_root(envelope.payload)
    try:
        keyring.load_trusted(envelope, crypto.verify_key)
        status = "self-signed: threshold met"
    except UpdateError as e:
        status = "NOT self-signed: %s" % e.message
    if args.json:
        doc = json.loads(envelope.payload)
        doc["signatures"] = envelope.keyids
        doc["status"] = status
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    created = " created %s," % timefmt.format(root.created) if root.created else ""
    expires = timefmt.format(root.expires)
    lines = ["root version %d,%s expires %s" % (root.version, created, expires)]
    for name in keyring.ROLES:
        role = root.role(name)
        lines.append("role %s: %d of %d" % (name, role.threshold, len(role.keyids)))
        for keyid in role.keyids:
            lines.append("  %s %s" % (keyid, role.keys[keyid].keytype))
    lines.append("signatures: %s" % (", ".join(k[:16] for k in envelope.keyids) or "none"))
    lines.append(status)
    for line in lines:  # an unverified root: printed inert (agent/commands/_text.py)
        print(printable(line))
    return 0


def update(args):
    from agent.state.statedir import StateLock
    from agent.trust.store import Trust
    from bootloader_iface import open_from_config

    cfg = config_mod.load(args.config)
    raws = [read_input(path, "root") for path in args.files]
    with StateLock(cfg.state_dir, "root update"):
        # The boot environment keeps the newest root version seen (the root floor).
        trust = Trust.from_config(cfg, boot=open_from_config(cfg))
        root = trust.update_root(raws)
    print("trusted root is now version %d" % root.version)
    return 0
