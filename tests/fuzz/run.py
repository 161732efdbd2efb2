"""Run the fuzz targets for longer than `make test` does, keeping what they find:

    make fuzz                          # every target, FUZZ_SECONDS (default 600) in all
    .venv/bin/python -m tests.fuzz.run --seconds 3600 job manifest

Each target gets an equal share of the time, in rounds of 2000 examples with fresh random
choices. An input that breaks a target's contract is shrunk by hypothesis and saved as
tests/fuzz/corpus/<target>/crash-<sha256 prefix>.bin: commit it with the fix, and every
later `make test` replays it.
"""

import argparse
import hashlib
import os
import sys
import time

from hypothesis import HealthCheck, given, settings

from tests.fuzz.mutate import inputs
from tests.fuzz.targets import CORPUS, TARGETS, load_corpus

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


def fuzz_test(name, examples):
    """A hypothesis test running `examples` inputs through target `name`."""
    target = TARGETS[name]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(inputs(load_corpus(name), target.json))
    def fuzz(data):
        target.check(data)

    return fuzz


def save_crash(name, data):
    path = os.path.join(CORPUS, name, "crash-%s.bin" % hashlib.sha256(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="some of: %s" % ", ".join(sorted(TARGETS)))
    parser.add_argument("--seconds", type=float, default=600.0, help="for all targets together")
    args = parser.parse_args(argv)
    unknown = [name for name in args.targets if name not in TARGETS]
    if unknown:
        parser.error("unknown target %s" % ", ".join(unknown))
    names = args.targets or sorted(TARGETS)
    share = args.seconds / len(names)
    found = 0
    for name in names:
        start, rounds = time.monotonic(), 0
        while time.monotonic() - start < share:
            rounds += 1
            try:
                fuzz_test(name, 2000)()
            except Exception as e:  # a finding: keep the shrunk input, go on with the next
                found += 1
                path = save_crash(name, TARGETS[name].last_failure or b"")
                print("%s: %s: %r (saved %s)" % (name, type(e).__name__, e, path))
                break
        print("%s: %d rounds of 2000 in %.0f s" % (name, rounds, time.monotonic() - start))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
