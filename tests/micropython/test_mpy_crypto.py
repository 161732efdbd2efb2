"""The board's own signature verifiers (agent/mpy: Ed25519, ECDSA P-256, SHA-512, DER) against
`cryptography` and the RFC 8032 test vectors, on CPython and on the real MicroPython port."""

import hashlib
import os
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519 as c_ed25519

from agent.core.keyring import Key
from agent.mpy import der, ed25519, p256
from agent.mpy.sha512 import sha512
from agent.mpy.verify import verify_key
from agent.trust import crypto

# RFC 8032 section 7.1: (secret, public, message, signature), hex.
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
]  # fmt: skip


def rfc_vectors():
    return [tuple(bytes.fromhex(x) for x in row) for row in RFC8032]


def test_the_rfc8032_vectors_are_the_published_ones():
    # cryptography derives the public key and (deterministically) the signature: the table
    # above is RFC 8032's, not a transcription slip.
    for secret, public, message, signature in rfc_vectors():
        key = c_ed25519.Ed25519PrivateKey.from_private_bytes(secret)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)  # fmt: skip
        assert raw == public and key.sign(message) == signature


def test_rfc8032_vectors_verify_and_any_flipped_bit_fails():
    for _, public, message, signature in rfc_vectors():
        assert ed25519.verify(public, signature, message)
        for i in (0, 31, 32, 63):
            bad = bytearray(signature)
            bad[i] ^= 0x01
            assert not ed25519.verify(public, bytes(bad), message)
        assert not ed25519.verify(public, signature, message + b"\x00")


def test_ed25519_refuses_a_non_canonical_s():
    _, public, message, signature = rfc_vectors()[1]
    s = int.from_bytes(signature[32:], "little") + ed25519.L  # same point, S >= L
    assert not ed25519.verify(public, signature[:32] + s.to_bytes(32, "little"), message)


def test_sha512_matches_hashlib():
    rng = random.Random(7)
    for n in (0, 1, 111, 112, 127, 128, 129, 239, 240, 1000, 4097):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert sha512(data).digest() == hashlib.sha512(data).digest(), n
        for piece in (1, 7, 128, 200):  # fed in pieces, through its one-block buffer
            h = sha512()
            for i in range(0, n, piece):
                h.update(data[i : i + piece])
            assert h.digest() == hashlib.sha512(data).digest(), (n, piece)


@pytest.mark.parametrize("keytype", ["ed25519", "ecdsa-p256"])
def test_signatures_made_by_cryptography_verify(keytype):
    for n in range(6):
        priv = crypto.generate(keytype)
        key = Key(crypto.keyid(priv), keytype, crypto.public_der(priv))
        message = os.urandom(37 * n)
        sig = crypto.sign(priv, message)
        assert verify_key(key, sig, message)
        assert not verify_key(key, sig, message + b"!")
        other = crypto.generate(keytype)
        assert not verify_key(Key("x", keytype, crypto.public_der(other)), sig, message)


def test_a_key_verifies_only_its_declared_type():
    ec = crypto.generate("ecdsa-p256")
    sig = crypto.sign(ec, b"m")
    assert not verify_key(Key("x", "ed25519", crypto.public_der(ec)), sig, b"m")
    assert not verify_key(Key("x", "rsa", crypto.public_der(ec)), sig, b"m")


def test_malformed_keys_and_signatures_are_false_not_errors():
    ec = crypto.generate("ecdsa-p256")
    der_key = crypto.public_der(ec)
    sig = crypto.sign(ec, b"m")
    key = Key("x", "ecdsa-p256", der_key)
    for junk in (b"", b"\x30", sig[:-1], sig + b"\x00", b"\x30\x06\x02\x01\x00\x02\x01\x01"):
        assert not verify_key(key, junk, b"m")
    for junk_key in (b"", der_key[:-1], der_key + b"\x00", b"\x30\x81\x05" + der_key[2:]):
        assert not verify_key(Key("x", "ecdsa-p256", junk_key), sig, b"m")
    assert der.p256_public(der_key[:-1]) is None
    assert not p256.on_curve(1, 1)
    assert not ed25519.verify(b"\x00" * 31, b"\x00" * 64, b"")


def _vectors_module(path):
    cases = []
    for keytype in ("ed25519", "ecdsa-p256"):
        priv = crypto.generate(keytype)
        message = os.urandom(1500)  # about the size of a signed manifest's PAE
        cases.append((keytype, crypto.public_der(priv), crypto.sign(priv, message), message))
    with open(path, "w") as f:
        f.write("RFC = %r\nCASES = %r\n" % (rfc_vectors(), cases))


def test_verifiers_on_micropython(micropython, tmp_path):
    _vectors_module(tmp_path / "vectors.py")
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, time\n"
        "sys.path.insert(0, %r)\n"
        "from vectors import RFC, CASES\n"
        "from agent.core.keyring import Key\n"
        "from agent.mpy import ed25519\n"
        "from agent.mpy.verify import verify_key\n"
        "for _, pub, msg, sig in RFC:\n"
        "    assert ed25519.verify(pub, sig, msg)\n"
        "    assert not ed25519.verify(pub, sig, msg + b'x')\n"
        "for kt, der, sig, msg in CASES:\n"
        "    key = Key('k', kt, der)\n"
        "    t = time.ticks_ms()\n"
        "    assert verify_key(key, sig, msg)\n"
        "    print('VERIFY', kt, time.ticks_diff(time.ticks_ms(), t))\n"
        "    assert not verify_key(key, sig, msg[1:])\n"
        "print('CRYPTO OK', sys.implementation.name)\n" % str(tmp_path)
    )
    done = micropython.run(script, heap="96K")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "CRYPTO OK micropython" in done.stdout, output
    print(done.stdout)
