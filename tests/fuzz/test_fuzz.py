"""Every parser that reads outside bytes, fuzzed for a bounded time in `make test`: the corpus
(seeds and every crashing input ever found) is replayed, then FUZZ_EXAMPLES mutated inputs
per target (default 200, about a second each). Longer runs: `make fuzz` (tests/fuzz/run.py)."""

import pytest

from tests.fuzz.run import EXAMPLES, fuzz_test
from tests.fuzz.targets import TARGETS, corpus_files


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_cleanly(name):
    files = corpus_files(name)
    assert any("/seed-" in path for path in files), "no seed for %s" % name
    for path in files:
        with open(path, "rb") as f:
            TARGETS[name].check(f.read())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name):
    fuzz_test(name, EXAMPLES)()
