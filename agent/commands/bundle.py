"""`charger-update bundle create|verify|inspect`: build, check and look into signed bundles.

The bundle, crypto and trust modules are imported inside the commands, not at the top: every
`charger-update` run, `--help` included, registers this module (start-up cost, issue 12).
"""

import binascii
import json
import os
import stat
import sys

from agent import config as config_mod
from agent.commands._args import add_expires, check_output, read_input
from agent.commands._text import printable
from agent.core.errors import BadSource, ConfigError


def register(subparsers):
    p = subparsers.add_parser("bundle", help="create, verify or inspect a signed update bundle")
    sub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="pack and sign payloads into a bundle")
    c.add_argument("--key", action="append", required=True, help="release private key (PEM)")
    c.add_argument("--version", required=True, dest="bundle_version", help="semver, e.g. 1.2.0")
    c.add_argument("--security-version", type=int, required=True)
    c.add_argument("--model", action="append", required=True)
    c.add_argument("--hw-rev", action="append", required=True)
    add_expires(c, 90)
    c.add_argument(
        "--payload",
        action="append",
        default=[],
        metavar="NAME:SLOT_CLASS:PATH[:gzip|:zstd-chunks]",
        help="zstd-chunks makes a format-2 bundle with a signed chunk index: chargers then "
        "download only the blocks they do not have (docs/transfer.md)",
    )
    c.add_argument(
        "--delta-base",
        action="append",
        default=[],
        metavar="NAME=IMAGE",
        help="an image of an earlier release that chargers run, for the zstd-chunks payload "
        "NAME (repeatable): what it lacks is also packed as front frames, so such a charger "
        "downloads its delta in one range (the bundle grows by about that delta; "
        "docs/bundle-format.md)",
    )
    c.add_argument(
        "--mcu",
        action="append",
        default=[],
        metavar="NAME:MCU_ID:PROTOCOL:ADDRESS:VERSION:PATH",
        help="an MCU image, e.g. safety-fw:safety:stm32-rom:0x08000000:2.1.0:safety.bin "
        "(protocols: stm32-rom, mcuboot-smp; docs/components.md)",
    )
    c.add_argument(
        "--window-bits",
        type=int,
        metavar="9..15",
        help="deflate window of the :gzip payloads, 2**N bytes (default 15, 32 KiB); signed "
        "into the manifest. A board needs that much free RAM to inflate: a MicroPython board "
        "with a small heap refuses a window larger than it holds (docs/micropython.md)",
    )
    c.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="a component version that belongs to this release without a payload in it",
    )
    c.add_argument("-o", "--out", required=True)
    c.set_defaults(func=create)
    v = sub.add_parser("verify", help="check signatures, policy and every payload byte")
    v.add_argument("file")
    v.add_argument("--root", help="trusted root file (default: [trust] root of --config)")
    v.add_argument("--model")
    v.add_argument("--hw-rev")
    v.add_argument("--installed-security-version", type=int)
    v.set_defaults(func=verify)
    i = sub.add_parser("inspect", help="show header, signatures and manifest (not verified)")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=inspect)
    o = sub.add_parser(
        "verify-ocpp", help="check an OCPP firmware file, detached signature and signing cert"
    )
    o.add_argument("file", help="the firmware file")
    o.add_argument("--signature", required=True, help="file holding the base64 signature")
    o.add_argument("--cert", required=True, help="PEM signing certificate (no intermediates)")
    o.add_argument(
        "--mfr-root",
        help="manufacturer root PEM (default: the roots the agent of --config trusts, "
        "[ocpp_firmware] manufacturer_roots and those a CSMS installed)",
    )
    o.add_argument("--crl", action="append", default=[], help="revocation list (PEM or DER)")
    o.add_argument(
        "--rsa-pkcs1v15",
        action="store_true",
        help="also accept RSA PKCS#1 v1.5 signatures (what `openssl dgst -sign` makes); "
        "RSA-PSS and ECDSA are always accepted",
    )
    o.set_defaults(func=verify_ocpp)


def parse_payload_spec(spec):
    from agent.bundle.writer import PayloadSource

    compression = "none"
    for suffix in (":gzip", ":none", ":zstd-chunks"):
        if spec.endswith(suffix):
            spec, compression = spec[: -len(suffix)], suffix[1:]
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(
            "--payload %r is not NAME:SLOT_CLASS:PATH[:gzip|:zstd-chunks]" % spec,
            hint="e.g. --payload rootfs:rootfs:build/rootfs.ext4:gzip",
        )
    return PayloadSource(parts[0], parts[1], parts[2], compression)


def parse_mcu_spec(spec):
    from agent.bundle.writer import PayloadSource

    parts = spec.split(":", 5)
    try:
        if len(parts) != 6 or not all(parts):
            raise ValueError
        address = int(parts[3], 0)
    except ValueError:
        raise ConfigError(
            "--mcu %r is not NAME:MCU_ID:PROTOCOL:ADDRESS:VERSION:PATH" % spec,
            hint="e.g. --mcu safety-fw:safety:stm32-rom:0x08000000:2.1.0:build/safety.bin",
        ) from None
    mcu = {"id": parts[1], "protocol": parts[2], "address": address, "version": parts[4]}
    return PayloadSource(parts[0], None, parts[5], "none", component=parts[1], mcu=mcu)


def parse_components(specs, manifest_payloads, version):
    found = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise ConfigError("--component %r is not NAME=VERSION" % spec)
        found[name] = value
    if not found:
        return None
    for p in manifest_payloads:  # the payloads' own components belong to it as well
        if p.mcu is not None:
            found.setdefault(p.component or p.mcu["id"], p.mcu["version"])
        else:
            found.setdefault(p.component or p.slot_class, version)
    return found


def _set_window_bits(sources, bits):
    if bits is None:
        return
    if not 9 <= bits <= 15:
        raise ConfigError("--window-bits %d is out of range" % bits, hint="give 9..15")
    gzipped = [s for s in sources if s.compression == "gzip"]
    if not gzipped:
        raise ConfigError("--window-bits applies to :gzip payloads and none was given",
                          hint="e.g. --payload app:app:build/app.bin:gzip")  # fmt: skip
    for source in gzipped:
        source.window_bits = bits


def _set_bases(sources, specs):
    chunked = dict((s.name, s) for s in sources if s.compression == "zstd-chunks")
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise ConfigError(
                "--delta-base %r is not NAME=IMAGE" % spec,
                hint="e.g. --delta-base rootfs=releases/1.4.0/rootfs.ext4",
            )
        if name not in chunked:
            raise ConfigError(
                "--delta-base %s: no zstd-chunks payload is named %s" % (spec, name),
                hint="a delta base belongs to a --payload NAME:...:zstd-chunks",
            )
        if not os.path.isfile(path):
            raise ConfigError("--delta-base %s: %s is not a readable image file" % (spec, path))
        chunked[name].bases.append(path)


def create(args):
    from agent.bundle.writer import create_bundle
    from agent.trust import crypto

    compatible = [{"model": m, "hardware_revisions": list(args.hw_rev)} for m in args.model]
    sources = [parse_payload_spec(s) for s in args.payload] + [parse_mcu_spec(s) for s in args.mcu]
    if not sources:
        raise ConfigError("a bundle needs at least one --payload or --mcu")
    check_output(args.out)
    _set_window_bits(sources, args.window_bits)
    _set_bases(sources, args.delta_base)
    try:
        manifest = create_bundle(
            args.out,
            sources,
            [crypto.load_private(k) for k in args.key],
            version=args.bundle_version,
            security_version=args.security_version,
            compatible=compatible,
            expires=args.expires,
            components=parse_components(args.component, sources, args.bundle_version),
        )
    except OSError as e:
        raise ConfigError("cannot write %s: %s" % (args.out, e.strerror or e)) from None
    print(
        "wrote %s: version %s, security version %d, %d payload(s), %d bytes of payload"
        % (
            args.out,
            manifest.version,
            manifest.security_version,
            len(manifest.payloads),
            manifest.payload_bytes,
        )
    )
    return 0


def verify(args):
    from agent.bundle.reader import verify_file
    from agent.trust.store import Trust

    if args.root:
        trust = Trust(args.root)
    else:
        trust = Trust.from_config(config_mod.load(args.config))
    device = None
    if args.model or args.hw_rev:
        device = {"model": args.model, "hardware_revision": args.hw_rev}
    check_bundle_file(args.file)
    manifest = verify_file(args.file, trust, device, args.installed_security_version)
    print(
        printable(
            "OK %s: version %s, security version %d, signed by the trusted root version %d"
            % (args.file, manifest.version, manifest.security_version, trust.root.version)
        )
    )
    return 0


def check_bundle_file(path):
    """BadSource (one line, exit 24) unless `path` is a readable regular file."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise BadSource("bundle %s is not a regular file" % path, hint="give a bundle file")
        with open(path, "rb"):
            pass
    except OSError as e:
        raise BadSource("cannot open bundle %s: %s" % (path, e.strerror or e)) from None


def describe(path):
    """Everything in the bundle's head, UNVERIFIED, as a JSON-ready dict."""
    check_bundle_file(path)
    from agent.bundle import format as fmt
    from agent.bundle.reader import open_bundle, read_indexes
    from agent.core.errors import UpdateError

    with open(path, "rb") as f:
        magic = f.read(len(fmt.MAGIC))
        f.seek(0)
        manifest, envelope = open_bundle(f.read)
        try:
            indexes, problem = read_indexes(f.read, manifest), None
        except UpdateError as e:  # shown, not fatal: inspect shows what is there
            indexes, problem = {}, e.message
    length = len(envelope.raw)
    offsets = fmt.payload_offsets(length, manifest)
    doc = manifest.to_dict()
    for entry, (payload, offset) in zip(doc["payloads"], offsets):
        entry["offset"] = offset
        if payload.index is not None:
            entry["chunk_index"] = _index_facts(indexes.get(payload.name), problem)
    return {
        "file": path,
        "magic": magic.decode("ascii", "replace").strip(),
        "envelope_length": length,
        "payload_type": envelope.payload_type,
        "signatures": envelope.keyids,
        "manifest": doc,
        "verified": False,
    }


def _index_facts(index, problem):
    """What a format-2 payload's chunk index says (its front: docs/bundle-format.md)."""
    if index is None:
        return {"problem": problem or "not read"}
    return {
        "block_size": index.block_size, "blocks": index.count, "groups": len(index.groups),
        "window": index.window, "detail_bytes": index.detail_size,
        "front_groups": len(index.front), "front_frames": sum(1 for f in index.front.values()
                                                              if f[3]),
        "front_bytes": index.front_size,
    }  # fmt: skip


def inspect(args):
    doc = describe(args.file)
    if args.json:
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    m = doc["manifest"]
    lines = [
        "%s: %s bundle, envelope %d bytes (NOT verified)"
        % (args.file, doc["magic"], doc["envelope_length"]),
        "version %s  security version %d" % (m["version"], m["security_version"]),
        "created %s  expires %s" % (m["created"], m["expires"]),
    ]
    for c in m["compatible"]:
        lines.append("fits %s revisions %s" % (c["model"], ", ".join(c["hardware_revisions"])))
    for p in m["payloads"]:
        if p.get("type") == "mcu":
            mcu = p["mcu"]
            target = "MCU %s (%s at 0x%08x, version %s)" % (
                mcu["id"], mcu["protocol"], mcu["address"], mcu["version"])  # fmt: skip
        else:
            target = p["slot_class"]
        lines.append(
            "payload %s -> %s: %d bytes at %d, %s, sha256 %s"
            % (p["name"], target, p["size"], p["offset"], p["compression"], p["sha256"])
        )
        ix = p.get("chunk_index")
        if ix and "problem" in ix:
            lines.append("  chunk index: %s" % ix["problem"])
        elif ix:
            front = "no front (packed without --delta-base)"
            if ix["front_groups"]:
                front = "front for the --delta-base releases: %d groups, %d frames, %d bytes" % (
                    ix["front_groups"], ix["front_frames"], ix["front_bytes"])  # fmt: skip
            lines.append(
                "  chunk index: %d blocks of %d bytes in %d groups, %d KiB window; %s"
                % (ix["blocks"], ix["block_size"], ix["groups"], ix["window"] >> 10, front)
            )
    lines.append("components %s" % ", ".join(
        "%s %s" % (n, v) for n, v in sorted(m["components"].items())))  # fmt: skip
    lines += ["signed by %s" % keyid for keyid in doc["signatures"]]
    for line in lines:  # unverified content: printed inert (agent/commands/_text.py)
        print(printable(line))
    return 0


def verify_ocpp(args):
    """The check the agent runs on an OCPP request (agent/trust/manufacturer.py): the signing
    certificate issued directly by a manufacturer root, valid, for code signing, not revoked;
    then the detached signature over the whole file."""
    from agent.trust import crypto
    from agent.trust.manufacturer import ManufacturerRoots

    if args.mfr_root:
        roots = ManufacturerRoots(None, [args.mfr_root], args.crl, args.rsa_pkcs1v15)
    else:
        cfg = config_mod.load(args.config)
        roots = ManufacturerRoots.from_config(cfg)
        roots.crl_paths += args.crl
        roots.rsa_pkcs1v15 = roots.rsa_pkcs1v15 or args.rsa_pkcs1v15
        if not roots.roots():
            raise ConfigError(
                "no manufacturer root given",
                hint="pass --mfr-root ROOT.pem or set [ocpp_firmware] manufacturer_roots "
                "(or [trust] manufacturer_root) in the config",
            )
    try:
        digest = crypto.file_digest(args.file)
    except OSError as e:
        raise ConfigError("cannot read %s: %s" % (args.file, e.strerror)) from None
    roots.verify(
        digest,
        read_input(args.signature, "signature"),
        read_input(args.cert, "signing certificate"),
    )
    digest = binascii.hexlify(digest).decode("ascii")
    print("OK %s: sha256 %s, signature and certificate chain verified" % (args.file, digest))
    return 0
