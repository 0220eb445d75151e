"""Workers that write their own chunks: the driver hands out chunk-aligned row ranges and commits
their metadata in order (pipeline/capture/distributed.py). Real worker processes throughout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.store import GroupKey, Store, verify
from traitlens.testing import chunk_files, sigkill_if_running, wait_until, write_corpus

pytestmark = pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out


def by_prompt(store: Store, key: GroupKey, layer: int) -> dict[str, np.ndarray]:
    acts = store.activations(key, layer)
    return {r["prompt_id"]: acts[r["row"]] for r in store.group_rows(key).to_pylist()}


def assert_same_store(a: Store, b: Store, n: int) -> None:
    """Every group, every layer: the same prompts, each exactly once, value for value."""
    assert a.groups() == b.groups()
    for key in a.groups():
        ids = b.group_rows(key)["prompt_id"].to_pylist()
        assert len(ids) == len(set(ids)) == n
        for layer in a.layers(key):
            xa, xb = by_prompt(a, key, layer), by_prompt(b, key, layer)
            assert xa.keys() == xb.keys()
            np.testing.assert_array_equal(np.stack([xa[k] for k in sorted(xa)]), np.stack([xb[k] for k in sorted(xb)]))


def parts(store_path) -> int:
    d = store_path / "tables" / "rows"
    return len(list(d.glob("part-*.parquet"))) if d.exists() else 0


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_a_worker_killed_mid_run_loses_nothing_and_the_run_completes(tmp_path, tiny_lms, cluster):
    from distributed import Client

    lm = tiny_lms["llama"]
    c = write_corpus(tmp_path / "c.jsonl", 600)
    cfg = IngestConfig(poolings=["last", "mean"], batch_size=8, chunk_rows=16)
    ingest(tmp_path / "local", [c], cfg=cfg, lm=lm, progress=False)
    with Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_one():
            rows = tmp_path / "dist" / "tables" / "rows"
            wait_until(lambda: rows.exists() and len(list(rows.glob("part-*"))) >= 3)
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # its nanny starts a fresh one

        t = threading.Thread(target=kill_one)
        t.start()
        res = ingest(tmp_path / "dist", [c], cfg=cfg, lm=lm, progress=False, client=client)
        t.join()
        assert res.n_captured == 600  # Dask reran the dead worker's ranges: rows rewritten whole
    b = Store.open(tmp_path / "dist")
    assert verify(b).clean
    assert_same_store(Store.open(tmp_path / "local"), b, 600)


def test_kill_9_during_a_distributed_ingest_ten_times_then_the_rerun_equals_a_local_run(tmp_path, tiny_llama,
                                                                                        cluster):
    """The driver dies at chosen points while its tasks may still run on the workers: nothing
    committed is lost, and a task that outlives its run never writes into the next run's rows."""
    n = 3000
    c = write_corpus(tmp_path / "c.jsonl", n)
    args = ["--model", str(tiny_llama), "--batch-size", "8", "--quiet", "--device", "cpu"]
    cli = [sys.executable, "-m", "traitlens.workflows.cli"]
    subprocess.run(cli + ["--store", str(tmp_path / "local"), "ingest", str(c), *args], check=True,
                   capture_output=True)
    dist = tmp_path / "dist"
    cmd = cli + ["--store", str(dist), "ingest", str(c), *args, "--scheduler", cluster.scheduler_address]
    kills, partial = 0, 0
    for attempt in range(10):
        if dist.exists() and all(v == n for v in Store.open(dist).group_counts().values()):
            shutil.rmtree(dist)  # the last run finished before its kill: start again from nothing
        before = parts(dist)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # where the kill lands is a state of the run, never a sleep a fast machine outruns: just
            # after its first committed range, mid-range (workers writing chunks), or a range later
            wait_until(lambda: parts(dist) > before or p.poll() is not None)
            if attempt % 3 == 1:
                written = chunk_files(dist)
                wait_until(lambda: chunk_files(dist) > written or p.poll() is not None)
            elif attempt % 3 == 2:
                wait_until(lambda: parts(dist) > before + 1 or p.poll() is not None)
            kills += sigkill_if_running(p)
        finally:
            sigkill_if_running(p)
        if (dist / "store.json").exists():
            s = Store.open(dist)
            rep = verify(s, check_values=False)
            assert not rep.errors, rep.errors  # a kill may leave tails, never damage
            counts = s.group_counts()
            partial += any(0 < v < n for v in counts.values())
    assert kills >= 5 and partial >= 2, (kills, partial)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    store = Store.open(dist)
    verify(store, repair=True)
    assert verify(store).clean
    assert_same_store(Store.open(tmp_path / "local"), store, n)
