"""`charger-update keygen`: make a signing key pair (NAME.key 0600, NAME.pub), print its id."""

from agent.commands._args import check_output
from agent.core.errors import ConfigError
from agent.core.keyring import KEYTYPES


def register(subparsers):
    p = subparsers.add_parser("keygen", help="generate a signing key pair")
    p.add_argument("--type", choices=KEYTYPES, default="ed25519", dest="keytype")
    p.add_argument("--out", required=True, metavar="NAME", help="writes NAME.key and NAME.pub")
    p.set_defaults(func=run)


def run(args):
    check_output(args.out + ".key")
    from agent.trust import crypto  # here, not at the top: --help must not import cryptography

    key = crypto.generate(args.keytype)
    try:
        keyid = crypto.save_keypair(key, args.out)
    except FileExistsError:
        print("charger-update: %s.key exists; not overwriting a key" % args.out)
        return 1
    except OSError as e:
        raise ConfigError("cannot write %s.key: %s" % (args.out, e.strerror or e)) from None
    print("%s %s %s.key %s.pub" % (keyid, args.keytype, args.out, args.out))
    return 0
