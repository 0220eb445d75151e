"""Ctrl-C and SIGTERM, sent to real `traitlens` processes: they stop promptly, keep what is
complete, record the run as interrupted, and exit with the documented code and one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from traitlens.testing import alive, descendants, end_all, synthetic_store, wait_until, write_corpus
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
    n = 1200  # the signal follows the first commit (256 prompts): the rest is enough to be inside the work
    corpus = write_corpus(tmp_path / "c.jsonl", n)
    s = tmp_path / "s"
    cmd = CLI + ["--store", str(s), "ingest", str(corpus), "--model", str(tiny_llama), "--batch-size", "8",
                 "--device", "cpu", "--quiet"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    send_when(p, lambda: rows_parts(s) >= 1, signal.SIGTERM)  # a committed part, not a clock
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, (out, err)
    assert "terminated (SIGTERM)" in err and "prompts committed" in err and "Traceback" not in err, err
    store = Store.open(s)
    runs = store.runs().to_pylist()
    assert [r["status"] for r in runs] == ["interrupted"] and "SIGTERM" in runs[0]["message"]
    assert not verify(store).errors
    n_before = store.committed(store.groups()[0]).n_prompts
    assert 0 < n_before < n
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)  # a hang guard only
    assert done.returncode == 0, done.stderr
    assert f"{n_before} already stored" in done.stdout
    store = Store.open(s)
    assert verify(store).clean and all(store.committed(g).n_prompts == n for g in store.groups())


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory):
    """Enough rows and layers that a default extraction runs for many seconds on two cores."""
    path = tmp_path_factory.mktemp("slow") / "s"
    synthetic_store(path, n=20000, d=256, layers=tuple(range(6)), chunk_rows=256)
    return path


@pytest.fixture(scope="module")
def uninterrupted_seconds(slow_store):
    """How long the extraction the signal tests interrupt takes when left alone, measured here
    and now (another seed: its vectors are not the ones the tests look for). Promptness is
    judged against it, never against a fixed number of seconds a loaded machine can exceed."""
    t = time.monotonic()
    subprocess.run(CLI + ["--store", str(slow_store), "extract", "--trait", "planted", "--n-boot", "8", "--seed", "1",
                          "--quiet"], env=ENV, check=True, capture_output=True)
    return time.monotonic() - t


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_extract_stops_promptly_on_the_signal_and_stores_nothing_half_done(slow_store, uninterrupted_seconds, sig,
                                                                           code):
    cmd = CLI + ["--store", str(slow_store), "extract", "--trait", "planted", "--n-boot", "8", "--seed", str(code)]
    ready = once_running(slow_store)
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    workers: list[int] = []

    def inside_the_fits():  # (and who works on them, just before the signal)
        workers[:] = descendants(p.pid)
        return ready()

    try:
        sent = send_when(p, inside_the_fits, sig)
        out, err = p.communicate(timeout=600)  # a hang guard only
        waited = time.monotonic() - sent
    finally:
        p.kill()
        p.wait()
        end_all(workers)
    assert p.returncode == code, (out, err)
    assert wait_until(lambda: not alive(workers)), "a worker outlived the interrupted command"
    # the work in hand stops at once: far sooner than the fits it interrupted would have taken
    assert waited < uninterrupted_seconds / 2, (waited, uninterrupted_seconds)
    assert "Traceback" not in err, err
    store = Store.open(slow_store)
    last = store.runs().to_pylist()[-1]
    assert last["status"] == "interrupted" and "no vector of this run was stored" in last["message"]
    assert not any(v["run_id"] == last["run_id"] for v in store.table("vectors").to_pylist())


def cpu_seconds_of(cmd) -> float:
    """CPU seconds (user + system) a command takes to run to its end."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    after_ = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after_.ru_utime - before.ru_utime) + (after_.ru_stime - before.ru_stime)


def busier_than(p: subprocess.Popen, cpu_seconds: float):
    """A ``ready`` for :func:`send_when`: true once ``p`` has used more CPU than ``cpu_seconds``.
    CPU time, not a clock: a loaded machine slows both alike."""
    import psutil

    proc = psutil.Process(p.pid)

    def ready():
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system > cpu_seconds
    return ready


def test_ctrl_c_and_timeout_stop_a_long_query(slow_store):
    long_sql = "SELECT sum(a.range * b.range) FROM range(300000) a, range(300000) b"
    # past what a whole trivial query costs (imports, opening the store), the long one is inside DuckDB
    trivial = cpu_seconds_of(CLI + ["--store", str(slow_store), "query", "SELECT 1"])
    p = subprocess.Popen(CLI + ["--store", str(slow_store), "query", long_sql], env=ENV, preexec_fn=sigint_default,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    send_when(p, busier_than(p, trivial + 1.0), signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "query interrupted" in err and "Traceback" not in err, err
    # (no clock: the cross join runs for hours, so ending at all is ending promptly)
    r = subprocess.run(CLI + ["--store", str(slow_store), "query", "--timeout", "1", long_sql], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--timeout 1 s" in r.stderr and "Traceback" not in r.stderr, r.stderr


# `traitlens ARGS`, sending itself SIG (argv[1]) from inside an at-fork hook of the first
# multiprocessing fork: the moment a signal lands while extract forks its workers
SIGNAL_IN_A_FORK = """
import os, signal, sys, traceback
sig, sent = getattr(signal, sys.argv.pop(1)), []

def in_the_fork():
    if not sent and any("popen_fork" in f.filename for f in traceback.extract_stack()):
        sent.append(1)
        os.kill(os.getpid(), sig)

os.register_at_fork(after_in_parent=in_the_fork)
sys.argv[0] = "traitlens"
from traitlens.workflows.cli import main
main()
"""


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_that_lands_while_extract_forks_its_workers_is_not_dropped(tmp_path, sig, code):
    """Its handler ran inside logging's at-fork hook, where Python drops the exception: the
    extraction carried on and exited 0 with its vectors stored, as if never signalled."""
    store, _ = synthetic_store(tmp_path / "s", n=400, d=16, layers=tuple(range(6)))
    p = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_FORK, sig, "--store", str(store.root), "extract", "--trait",
                        "planted", "--scheduler", "processes", "--quiet"], env=ENV, capture_output=True, text=True,
                       preexec_fn=sigint_default, timeout=600)  # a hang guard only
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    last = Store.open(store.root).runs().to_pylist()[-1]
    assert last["status"] == "interrupted" and Store.open(store.root).table("vectors").num_rows == 0
