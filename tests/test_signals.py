"""Ctrl-C and SIGTERM, sent to real `traitlens` processes: they stop promptly, keep what is
complete, record the run as interrupted, and exit with the documented code and one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from traitlens.testing import synthetic_store, write_corpus
from traitlens.store import Store, verify

pytestmark = pytest.mark.slow  # real processes and signals: `make test-fast` leaves them out

CLI = [sys.executable, "-m", "traitlens.workflows.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def sigint_default():
    """Popen's ``preexec_fn``: a job a shell started in the background inherits SIGINT ignored,
    and Python then never turns Ctrl-C into KeyboardInterrupt; a user's terminal never does that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rows_parts(store) -> int:
    d = store / "tables" / "rows"
    return len(list(d.glob("part-*.parquet"))) if d.exists() else 0


def after(seconds: float):
    """A ``ready`` for :func:`send_when`: true once ``seconds`` have passed."""
    at = time.time() + seconds
    return lambda: time.time() >= at


def once_running(store_path, then: float = 1.0):
    """A ``ready`` for :func:`send_when`: true ``then`` seconds after a new run recorded itself
    `running` (the process is past its imports and inside the work, however loaded the machine)."""
    before = len(Store.open(store_path).runs())
    seen: list[float] = []

    def ready():
        if not seen and len(Store.open(store_path).runs()) > before:
            seen.append(time.time())
        return bool(seen) and time.time() >= seen[0] + then
    return ready


def send_when(p: subprocess.Popen, ready, sig, timeout: float = 120) -> float:
    """Wait for ``ready()`` (the process is mid-work), send ``sig``; returns the moment sent."""
    deadline = time.time() + timeout
    while not ready() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the process ended before the signal could be sent: give it more work"
    t = time.monotonic()
    p.send_signal(sig)
    return t


def test_sigterm_during_ingest_commits_records_interrupted_and_a_rerun_finishes(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 12000)
    s = tmp_path / "s"
    cmd = CLI + ["--store", str(s), "ingest", str(corpus), "--model", str(tiny_llama), "--batch-size", "8",
                 "--device", "cpu", "--quiet"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    send_when(p, lambda: rows_parts(s) >= 2, signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, (out, err)
    assert "terminated (SIGTERM)" in err and "prompts committed" in err and "Traceback" not in err, err
    store = Store.open(s)
    runs = store.runs().to_pylist()
    assert [r["status"] for r in runs] == ["interrupted"] and "SIGTERM" in runs[0]["message"]
    assert not verify(store).errors
    n_before = store.committed(store.groups()[0]).n_prompts
    assert 0 < n_before < 12000
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{n_before} already stored" in done.stdout
    store = Store.open(s)
    assert verify(store).clean and all(store.committed(g).n_prompts == 12000 for g in store.groups())


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory):
    """Enough rows and layers that a default extraction runs for many seconds on two cores."""
    path = tmp_path_factory.mktemp("slow") / "s"
    synthetic_store(path, n=20000, d=256, layers=tuple(range(6)), chunk_rows=256)
    return path


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_extract_stops_within_seconds_of_the_signal_and_stores_nothing_half_done(slow_store, sig, code):
    cmd = CLI + ["--store", str(slow_store), "extract", "--trait", "planted", "--n-boot", "8", "--seed", str(code)]
    ready = once_running(slow_store)
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    sent = send_when(p, ready, sig)  # inside the fits
    out, err = p.communicate(timeout=120)
    waited = time.monotonic() - sent
    assert p.returncode == code, (out, err)
    assert waited < 10, f"exited {waited:.1f} s after the signal"  # the fits take far longer than this
    assert "Traceback" not in err, err
    store = Store.open(slow_store)
    last = store.runs().to_pylist()[-1]
    assert last["status"] == "interrupted" and "no vector of this run was stored" in last["message"]
    assert not any(v["run_id"] == last["run_id"] for v in store.table("vectors").to_pylist())


def test_ctrl_c_and_timeout_stop_a_long_query(slow_store):
    long_sql = "SELECT sum(a.range * b.range) FROM range(300000) a, range(300000) b"
    p = subprocess.Popen(CLI + ["--store", str(slow_store), "query", long_sql], env=ENV, preexec_fn=sigint_default,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    sent = send_when(p, after(5), signal.SIGINT)  # well past the imports: DuckDB is running
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "query interrupted" in err and "Traceback" not in err, err
    assert time.monotonic() - sent < 10
    r = subprocess.run(CLI + ["--store", str(slow_store), "query", "--timeout", "1", long_sql], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--timeout 1 s" in r.stderr and "Traceback" not in r.stderr, r.stderr
