"""Nothing outlives its command: `kill -9` of a `traitlens` process ends every process it started
(pipeline/runtime/lifeline.py), and the next command that takes the store's lock records the
killed runs as `killed` (store/runs.py). Real processes, found through psutil."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from traitlens.store import Store, verify
from traitlens.testing import alive, end_all, sigkill_if_running, synthetic_store, wait_until

CLI = [sys.executable, "-m", "traitlens.workflows.cli"]


@pytest.fixture(scope="module")
def busy_store(tmp_path_factory):
    """Enough rows and layers that an extraction on forked workers runs for seconds."""
    path = tmp_path_factory.mktemp("busy") / "s"
    synthetic_store(path, n=20000, d=256, layers=tuple(range(6)), chunk_rows=256)
    return path


@pytest.mark.slow
def test_kill_9_of_extract_on_forked_workers_leaves_no_worker_three_times_then_runs_are_marked_killed(busy_store):
    cmd = CLI + ["--store", str(busy_store), "extract", "--trait", "planted", "--scheduler", "processes",
                 "--n-boot", "64", "--quiet"]
    killed_runs = 0
    for attempt in range(3):
        runs_before = len(Store.open(busy_store).runs())
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parent = psutil.Process(p.pid)
        workers: list[int] = []
        try:
            # the workers are forked when the fits start; kill the parent once they exist
            assert wait_until(lambda: p.poll() is not None or len(parent.children(recursive=True)) >= 2)
            workers = [c.pid for c in parent.children(recursive=True)]
            assert p.poll() is None and workers, "the extraction ended before it could be killed: give it more work"
            killed_runs += len(Store.open(busy_store).runs()) > runs_before
            sigkill_if_running(p)
            wait_until(lambda: not alive(workers))
            assert not alive(workers), f"attempt {attempt}: workers {alive(workers)} outlived their killed parent"
        finally:
            sigkill_if_running(p)
            end_all(workers)
    assert killed_runs == 3  # each kill landed inside a recorded run
    runs = Store.open(busy_store).runs().to_pylist()
    # each run recorded its start under the lock, noticing the run killed before it; the last is
    # still `running`: nothing has taken the lock since
    assert [r["status"] for r in runs] == ["killed", "killed", "running"]
    # the next command that takes the writer lock records them as killed
    done = subprocess.run(CLI + ["--store", str(busy_store), "extract", "--trait", "planted", "--layers", "0",
                                 "--methods", "mean_diff", "--n-boot", "0", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(CLI + ["--store", str(busy_store), "runs", "--json"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["status"] for r in rows) == ["done", "killed", "killed", "killed"]
    for r in rows:
        if r["status"] == "killed":
            assert r["ended_at"] and r["ended_at"] >= r["started_at"] and "kill" in r["message"]
    assert verify(Store.open(busy_store)).clean


def test_a_child_bound_to_its_parent_dies_with_it_even_when_bound_after_the_parent_died(tmp_path):
    """The race the module closes: a child whose parent died before ``bind_to_parent`` ran is
    already an orphan, so no death signal will come; it must leave by itself."""
    code = ("import os, sys, time\n"
            "from traitlens.pipeline.runtime.lifeline import bind_to_parent\n"
            "parent = os.getpid()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    time.sleep(float(sys.argv[1]))  # the parent may die meanwhile\n"
            "    bind_to_parent(parent)\n"
            "    print('bound', flush=True); time.sleep(600); os._exit(0)\n"
            "print('child', pid, flush=True); time.sleep(600)\n")
    for delay in (0.0, 2.0):  # bound before the parent dies, and after
        p = subprocess.Popen([sys.executable, "-c", code, str(delay)], stdout=subprocess.PIPE, text=True)
        child: list[int] = []
        try:
            lines = [p.stdout.readline().split()]
            if delay == 0.0:
                lines.append(p.stdout.readline().split())  # the child bound itself before the kill
                assert ["bound"] in lines
            child.append(int(next(w[1] for w in lines if w[0] == "child")))
            sigkill_if_running(p)
            assert wait_until(lambda: not alive(child)), f"delay {delay}: the child outlived its parent"
        finally:
            sigkill_if_running(p)
            end_all(child)


def test_sigkill_if_running_kills_a_live_process_reaps_it_and_says_whether_it_ran():
    """The tests' one kill: a live process is SIGKILLed and reaped (True, so a test counts only the
    kills that landed); one already ended, or killed already, is only reaped (False)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert sigkill_if_running(sleeper) is True
        assert sleeper.returncode == -9 and not alive([sleeper.pid])
        assert sigkill_if_running(sleeper) is False  # a cleanup in `finally` after the kill is harmless
    finally:
        sleeper.kill()
        sleeper.wait()
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: not alive([done.pid]))  # ended, not yet reaped
    assert sigkill_if_running(done) is False
    assert done.returncode == 0
