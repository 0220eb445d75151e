"""Runs whose process died without recording an end are recorded `killed` by the next command
that takes the store's lock, never a run that may still be alive; `traitlens runs` lists them
(store/runs.py, workflows/cli.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from click.testing import CliRunner

from traitlens.store.runs import this_host
from traitlens.testing import lock_held_elsewhere, strict_json, synthetic_store
from traitlens.workflows.cli import cli

# a process that records a run as running, then dies at once without recording its end
DIES_MID_RUN = ("import os, signal, sys\n"
                "from traitlens.store import Store\n"
                "s = Store.open(sys.argv[1])\n"
                "cm = s.run(sys.argv[2], {}, lock=True); run = cm.__enter__()\n"
                "print(run.run_id, os.getpid(), flush=True)\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n")


def runs_json(store) -> list[dict]:
    r = CliRunner().invoke(cli, ["--store", str(store.root), "runs", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def status(store) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in store.runs().to_pylist()}


def test_a_run_killed_9_is_recorded_killed_by_the_next_command_that_takes_the_lock(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    p = subprocess.run([sys.executable, "-c", DIES_MID_RUN, str(store.root), "extract"], capture_output=True,
                       text=True)
    assert p.returncode == -signal.SIGKILL
    run_id, pid = p.stdout.split()
    assert status(store) == {run_id: "running"}  # reading records nothing
    shown = runs_json(store)  # but `runs` already says what it is
    assert [(r["run_id"], r["status"], r["recorded"], r["pid"]) for r in shown] == [(run_id, "killed", False, int(pid))]
    assert status(store) == {run_id: "running"}
    with store.lock("the next command"):
        pass
    (rec,) = store.runs().to_pylist()
    assert rec["status"] == "killed" and rec["ended_at"] >= rec["started_at"]
    assert f"pid {pid}" in rec["message"] and "noticed by the next command" in rec["message"]
    (shown,) = runs_json(store)
    assert shown["status"] == "killed" and shown["recorded"] and shown["ended_at"]
    text = CliRunner().invoke(cli, ["--store", str(store.root), "runs"]).output
    assert run_id in text and "killed" in text


def test_a_live_run_computing_without_the_lock_is_never_marked(tmp_path):
    """extract records its run under the lock, then fits for minutes without it: another command
    taking the lock meanwhile must leave that run `running`."""
    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    code = ("import sys, time\nfrom traitlens.store import Store\ns = Store.open(sys.argv[1])\n"
            "with s.run('extract', {}, lock=True) as run:\n    print(run.run_id, flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(store.root)], stdout=subprocess.PIPE, text=True)
    try:
        run_id = p.stdout.readline().strip()
        with store.lock("compact"):
            pass
        assert status(store) == {run_id: "running"}
        assert runs_json(store)[0]["status"] == "running"
    finally:
        p.kill()
        p.wait()
    with store.lock("compact"):  # now it is gone
        pass
    assert status(store) == {run_id: "killed"}


def test_this_process_never_marks_its_own_runs(tmp_path):
    """A workflow holds the lock around its ingest and extract runs, and extract takes it again
    (afresh, outside a workflow) to save its vectors while its own run is `running`."""
    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    with store.run("extract", {}, lock=True) as run:
        with store.lock("extract"):
            assert status(store) == {run.run_id: "running"}
    assert status(store) == {run.run_id: "done"}


def test_runs_of_other_hosts_are_judged_by_the_lock_alone(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    base = {"stage": "ingest", "status": "running", "pid": 4242, "host": "elsewhere:1", "config": "{}"}
    from traitlens.store.runs import now_utc

    store.record_run({**base, "run_id": "held", "held_lock": True, "started_at": now_utc()})
    store.record_run({**base, "run_id": "unheld", "stage": "extract", "held_lock": False, "started_at": now_utc()})
    store.record_run({**base, "run_id": "old-ingest", "pid": None, "host": None, "held_lock": None,
                      "started_at": now_utc()})  # recorded by a release that kept no pid
    store.record_run({**base, "run_id": "old-extract", "stage": "extract", "pid": None, "host": None,
                      "held_lock": None, "started_at": now_utc()})
    assert {r["run_id"]: r["status"] for r in runs_json(store)} == {
        "held": "running", "unheld": "running", "old-ingest": "running", "old-extract": "running"}
    with lock_held_elsewhere(store.root):  # someone else holds the lock: nothing is judged
        assert set(status(store).values()) == {"running"}
    with store.lock("verify --repair"):
        pass
    # a run that held the lock cannot be alive while we hold it; one that computes without it may be
    assert status(store) == {"held": "killed", "unheld": "running", "old-ingest": "killed", "old-extract": "running"}


def test_a_pid_reused_by_a_younger_process_does_not_keep_a_dead_run_running(tmp_path):
    from datetime import timedelta

    from traitlens.store.runs import now_utc

    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    parent = os.getppid()  # alive, and born before this test: a run it started an hour ago is its own
    young = os.getpid()  # this process: born after the run below "started"
    old_start = now_utc() - timedelta(days=365 * 30)
    store.record_run({"run_id": "reused", "stage": "extract", "status": "running", "pid": young,
                      "host": this_host(), "held_lock": False, "started_at": old_start, "config": "{}"})
    store.record_run({"run_id": "live", "stage": "extract", "status": "running", "pid": parent,
                      "host": this_host(), "held_lock": False, "started_at": now_utc(), "config": "{}"})
    code = ("import sys\nfrom traitlens.store import Store\nwith Store.open(sys.argv[1]).lock('check'):\n    pass\n")
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=True)
    assert status(store) == {"reused": "killed", "live": "running"}


def test_a_run_record_is_standard_json_even_with_a_nan_in_its_config_or_counts(tmp_path):
    """A metric that is undefined (NaN) in a run's counts or config is null with its reason in the
    record, which strict parsers (jq, JavaScript, Go) read; Python's json.dumps wrote bare NaN."""
    store, _ = synthetic_store(tmp_path / "s", n=40, d=4, layers=(0,))
    with store.run("extract", {"kl_budget": float("nan"), "layers": [0]}) as run:
        run.counts = {"vectors": 6, "stability": float("nan"), "top": float("inf")}
    rec = store.runs().to_pylist()[-1]
    assert rec["status"] == "done"
    assert strict_json(rec["config"]) == {"kl_budget": None, "layers": [0], "null_reasons": {"kl_budget": "NaN"}}
    assert strict_json(rec["counts"]) == {"vectors": 6, "stability": None, "top": None,
                                          "null_reasons": {"stability": "NaN", "top": "Infinity"}}
    assert runs_json(store)[-1]["counts"] == strict_json(rec["counts"])  # `traitlens runs --json` too
