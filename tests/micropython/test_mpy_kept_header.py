"""The signed header the download step keeps on flash (agent/mpy/steps.py header.bin) for the
verify and install steps' later VMs: used only for its own job and only whole; anything else
is fetched again. Runs the board's steps module on CPython (its file I/O is the same calls);
the fetch is replaced by a counter, as the rule under test is which bytes are taken, and the
real fetch is exercised on the unix port in test_mpy_agent.py."""

import os
from types import SimpleNamespace

import pytest

from agent.core.envelope import MAX_ENVELOPE
from agent.mpy import header, steps

RAW = b'{"payloadType": "x", "payload": "", "signatures": []}' * 20


@pytest.fixture
def fetched(monkeypatch):
    calls = []

    def fetch_header(url, *args):
        calls.append(url)
        return b"fetched:" + url.encode()

    monkeypatch.setattr(header, "fetch_header", fetch_header)
    return calls


def agent(tmp_path, job_id="job-1"):
    """What steps reads of the agent: a new VM's (nothing in RAM)."""
    job = SimpleNamespace(id=job_id, url="http://127.0.0.1:1/b.cub")
    return SimpleNamespace(
        cfg={"state_dir": str(tmp_path)}, journey=SimpleNamespace(job=job), envelope=None,
        timeout=lambda: 5, poller=lambda: None, download_tls=None, max_time=lambda: 0,
    )  # fmt: skip


def kept(tmp_path, raw=RAW, job_id="job-1"):
    steps._keep_header(agent(tmp_path, job_id), raw)
    return tmp_path / "header.bin"


def test_a_new_vm_takes_its_jobs_kept_header_and_fetches_nothing(tmp_path, fetched):
    kept(tmp_path)
    a = agent(tmp_path)
    assert steps._header(a) == RAW and a.envelope == RAW
    assert fetched == []
    assert not os.path.exists(str(tmp_path / "header.bin.tmp"))


def test_the_download_step_always_fetches_and_keeps_what_it_fetched(tmp_path, fetched):
    kept(tmp_path)  # the same job's earlier fetch: the bundle may have changed since
    a = agent(tmp_path)
    assert steps.download(a) == (steps.DOWNLOAD_OK, {})
    assert fetched == [a.journey.job.url]
    assert steps._header(agent(tmp_path)) == b"fetched:" + a.journey.job.url.encode()
    assert len(fetched) == 1


def _damaged(path):
    data = path.read_bytes()
    line, raw = data.split(b"\n", 1)
    return [
        data[:-1],  # torn
        data + b" ",  # a byte more
        line + b"\n" + bytes([raw[0] ^ 1]) + raw[1:],  # a bit flipped
        b"\n" + raw,  # no line
        raw,  # only the bytes
        b"",
    ]


@pytest.mark.parametrize("case", range(6))
def test_a_damaged_kept_header_is_fetched_again(tmp_path, fetched, case):
    path = kept(tmp_path)
    path.write_bytes(_damaged(path)[case])
    assert steps._header(agent(tmp_path)).startswith(b"fetched:")
    assert len(fetched) == 1


def test_a_kept_header_past_the_envelopes_bound_is_not_read(tmp_path, fetched, monkeypatch):
    big = b"x" * (MAX_ENVELOPE + 1)  # its line is right: only the bound refuses it
    kept(tmp_path, raw=big)
    reads = []
    real_open = open

    def counted(path, mode="r", *args):  # the bytes past the line are never read
        f = real_open(path, mode, *args)
        if str(path).endswith("header.bin") and "r" in mode:
            real_read = f.read
            f.read = lambda *n: reads.append(n) or real_read(*n)
        return f

    monkeypatch.setattr("builtins.open", counted)
    assert steps._header(agent(tmp_path)).startswith(b"fetched:")
    assert reads == [] and len(fetched) == 1
    kept(tmp_path, raw=big[:MAX_ENVELOPE])  # at the bound: taken
    assert steps._header(agent(tmp_path)) == big[:MAX_ENVELOPE]


def test_another_jobs_kept_header_or_none_is_fetched_again(tmp_path, fetched):
    assert steps._header(agent(tmp_path)).startswith(b"fetched:")  # none kept
    kept(tmp_path, job_id="job-0")
    assert steps._header(agent(tmp_path)).startswith(b"fetched:")
    kept(tmp_path, job_id="job-1 x")  # an id that would end the line early
    assert steps._header(agent(tmp_path, "job-1")).startswith(b"fetched:")
    assert len(fetched) == 3


def test_a_failed_write_costs_only_a_fetch(tmp_path, fetched, capsys):
    kept(tmp_path)  # this job's earlier fetch: the bundle may have changed since
    os.mkdir(str(tmp_path / "header.bin.tmp"))  # cannot be opened for writing
    steps._keep_header(agent(tmp_path), RAW + b" ")
    assert "header not kept" in capsys.readouterr().out
    assert not os.path.exists(str(tmp_path / "header.bin"))  # not the earlier one either
    assert steps._header(agent(tmp_path)).startswith(b"fetched:")
