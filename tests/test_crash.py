"""kill -9 during ingest loses nothing committed; a rerun completes the store exactly once."""

from __future__ import annotations

import pytest

import os
import random
import subprocess
import sys
import time

import numpy as np

from traitlens.testing import (alive, chunk_files, descendants, end_all, sigkill_if_running, wait_until,
                               write_corpus)
from traitlens.store import GroupKey, Store, verify


def ingest_cmd(store, corpus, model):
    return [sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store), "ingest", str(corpus),
            "--model", str(model), "--batch-size", "8", "--quiet", "--device", "cpu"]


def rows_parts(store):
    d = store / "tables" / "rows"
    return len(list(d.glob("part-*.parquet"))) if d.exists() else 0


def by_prompt(store: Store, key: GroupKey, layer: int) -> dict[str, np.ndarray]:
    acts = store.activations(key, layer)
    return {r["prompt_id"]: acts[r["row"]] for r in store.group_rows(key).to_pylist()}


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_kill_9_mid_ingest_then_rerun_is_clean_and_equal_to_uninterrupted(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 900)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(ingest_cmd(ref, corpus, tiny_llama), check=True, env=env, capture_output=True)

    store_path = tmp_path / "s"
    kills = 0
    # where each kill lands, as states of the run (never after a sleep a fast machine outruns):
    # just after a commit's rows part, in the middle of the next commit's array writes, after a part again
    for attempt, mid_arrays in enumerate((False, True, False)):
        before = rows_parts(store_path)
        p = subprocess.Popen(ingest_cmd(store_path, corpus, tiny_llama), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: rows_parts(store_path) > before or p.poll() is not None)
            if mid_arrays:
                written = chunk_files(store_path)
                wait_until(lambda: chunk_files(store_path) > written or p.poll() is not None)
            kills += sigkill_if_running(p)
        finally:
            sigkill_if_running(p)
        if (store_path / "store.json").exists():
            rep = verify(Store.open(store_path))
            assert not rep.errors, rep.errors  # a kill may leave tails, never damage
    assert kills >= 1
    done = subprocess.run(ingest_cmd(store_path, corpus, tiny_llama), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    store, refstore = Store.open(store_path), Store.open(ref)
    assert verify(store).clean
    runs = store.runs().to_pylist()
    # a killed run stays visible as never finished (unless the kill landed after its last record)
    assert sum(r["status"] == "running" for r in runs) <= kills, runs
    # the rerun ends done, unless a killed run had committed everything just before its kill
    # (then the rerun has nothing to do and, as every no-op, writes no record)
    assert runs[-1]["status"] == "done" or ": 0 prompts captured" in done.stdout, (runs, done.stdout)
    for key in refstore.groups():
        ids = store.group_rows(key)["prompt_id"].to_pylist()
        assert len(ids) == len(set(ids)) == 900
        for layer in (0, 2):
            a, b = by_prompt(store, key, layer), by_prompt(refstore, key, layer)
            assert a.keys() == b.keys()
            np.testing.assert_allclose(np.stack([a[k] for k in sorted(a)]), np.stack([b[k] for k in sorted(b)]),
                                       rtol=2e-3, atol=2e-3)


def test_failure_between_arrays_and_rows_part_keeps_committed_data(tmp_path, tiny_lms, monkeypatch):
    from traitlens.pipeline.capture.ingest import IngestConfig, ingest
    from traitlens.store import tables

    lm = tiny_lms["gpt2"]
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    cfg = IngestConfig(chunk_rows=8, batch_size=8)
    real = tables.write_part
    calls = {"rows": 0}

    def flaky(table_dir, table, schema):
        if table_dir.name == "rows":
            calls["rows"] += 1
            if calls["rows"] == 3:
                raise OSError(28, "No space left on device")
        return real(table_dir, table, schema)

    monkeypatch.setattr(tables, "write_part", flaky)
    try:
        ingest(tmp_path / "s", [corpus], cfg=cfg, lm=lm, progress=False)
        raise AssertionError("expected the disk-full error")
    except OSError as e:
        assert "No space left" in str(e)
    monkeypatch.setattr(tables, "write_part", real)
    store = Store.open(tmp_path / "s")
    key = GroupKey(lm.key, "raw", "resid", "last")
    assert store.committed(key).n_prompts == 16  # two commits of 8 landed
    rep = verify(store)
    assert not rep.errors and rep.tails  # the third commit's arrays are an uncommitted tail
    assert store.runs().to_pylist()[-1]["status"] == "failed"
    r = ingest(tmp_path / "s", [corpus], cfg=cfg, lm=lm, progress=False)
    assert (r.n_captured, r.n_skipped) == (24, 16)
    assert verify(store).clean


def test_read_only_store_and_full_disk_are_clear_errors_that_keep_committed_data(tmp_path, tiny_gpt2, monkeypatch):
    import os

    from click.testing import CliRunner

    from traitlens.store import tables
    from traitlens.workflows.cli import cli

    c = write_corpus(tmp_path / "c.jsonl", 20)
    s = tmp_path / "store"
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(s), *map(str, a)])  # noqa: E731
    assert run("ingest", c, "--model", tiny_gpt2, "--quiet", "--layers", "0").exit_code == 0
    grown = write_corpus(tmp_path / "c.jsonl", 30)

    real = tables.write_part

    def full(table_dir, table, schema):
        raise OSError(28, "No space left on device", str(table_dir))

    monkeypatch.setattr(tables, "write_part", full)
    r = run("ingest", grown, "--model", tiny_gpt2, "--quiet", "--layers", "0")
    assert r.exit_code == 1 and "the disk is full" in r.output and "intact" in r.output
    monkeypatch.setattr(tables, "write_part", real)
    assert Store.open(s).prompts().num_rows == 20

    def denied(table_dir, table, schema):
        raise PermissionError(13, "Permission denied", str(table_dir))

    monkeypatch.setattr(tables, "write_part", denied)
    r = run("ingest", grown, "--model", tiny_gpt2, "--quiet", "--layers", "0")
    assert r.exit_code == 1 and "permission denied" in r.output
    monkeypatch.setattr(tables, "write_part", real)
    if os.geteuid() != 0:  # a really read-only store (root ignores file modes, so only as a user)
        for p in [s, *s.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        r = run("ingest", grown, "--model", tiny_gpt2, "--quiet", "--layers", "0")
        assert r.exit_code == 1 and "permission denied" in r.output
        for p in [s, *s.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    r = run("ingest", grown, "--model", tiny_gpt2, "--quiet", "--layers", "0")
    assert r.exit_code == 0 and "10 prompts captured" in r.output
    assert verify(Store.open(s)).clean


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_kill_9_during_extract_leaves_the_vectors_table_whole(tmp_path):
    from traitlens.testing import synthetic_store

    store, _ = synthetic_store(tmp_path / "s", n=400, d=64, layers=tuple(range(12)))
    code = ("import sys; from traitlens.pipeline.extract.jobs import extract\n"
            "from traitlens.pipeline.extract.config import ExtractConfig\n"
            "extract(sys.argv[1], 'planted', cfg=ExtractConfig(n_boot=4), scheduler='processes')")
    vectors_dir = store.tables_path / "vectors"
    mid_run = 0
    # kill points as states of the run: its `running` record written; its workers forked (inside the
    # fits); its vectors part being written (a temporary on disk; if that moment is missed, after it)
    points = {"recorded": lambda: True, "fitting": lambda: bool(descendants(p.pid)),
              "saving": lambda: any(vectors_dir.glob(".tmp-*")) or any(vectors_dir.glob("part-*"))}
    for attempt, point in enumerate(points):
        p = subprocess.Popen([sys.executable, "-c", code, str(store.root)])
        workers: list[int] = []
        try:
            wait_until(lambda: len(store.runs()) > attempt or p.poll() is not None)  # the fits have begun
            wait_until(lambda: points[point]() or p.poll() is not None, every=0.002)
            workers = descendants(p.pid)
            alive_at_kill = sigkill_if_running(p)
            assert wait_until(lambda: not alive(workers)), f"workers {alive(workers)} outlived their killed parent"
        finally:
            sigkill_if_running(p)
            end_all(workers)
        t = store.table("vectors")
        assert t.num_rows in (0, 72)  # a vectors part lands whole or not at all
        assert not verify(store).errors
        runs = store.runs().to_pylist()
        if alive_at_kill and t.num_rows == 0:
            mid_run += 1
            assert runs[-1]["status"] == "running"  # killed mid-fit: visible as never finished (till the next lock)
    assert mid_run >= 1  # at least one kill landed between the start and the vectors part
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=True)
    vids = store.table("vectors")["vector_id"].to_pylist()
    assert len(vids) == len(set(vids)) == 72


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_kill_9_during_refresh_then_refresh_completes_like_an_uninterrupted_run(tmp_path, tiny_llama):
    from test_workflows import make_spec

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cmd = lambda folder: [sys.executable, "-m", "traitlens.workflows.cli", "refresh",  # noqa: E731
                          str(make_spec(folder, tiny_llama, 200, 200)), "--quiet"]
    subprocess.run(cmd(a), check=True, capture_output=True)
    rng = random.Random(2)
    for _ in range(3):
        p = subprocess.Popen(cmd(b), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        sigkill_if_running(p)
        if (b / "store" / "store.json").exists():
            assert not verify(Store.open(b / "store")).errors
    done = subprocess.run(cmd(b), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert verify(Store.open(b / "store")).clean
    va = {(v["trait"], v["layer"], v["method"]): v["vector"] for v in Store.open(a / "store").table("vectors").to_pylist()}
    vb = {}
    for v in Store.open(b / "store").table("vectors").to_pylist():
        assert (v["trait"], v["layer"], v["method"]) not in vb  # no vector stored twice
        vb[(v["trait"], v["layer"], v["method"])] = v["vector"]
    assert va.keys() == vb.keys()
    for k in va:
        np.testing.assert_allclose(va[k], vb[k], atol=1e-4)


def test_a_reader_during_a_write_sees_only_committed_rows(tmp_path):
    from traitlens.testing import KEY, synthetic_store

    from traitlens.queries import StoreSQL

    store, _ = synthetic_store(tmp_path / "s", n=100, d=8, layers=(0,))
    arr = store.zarr_root(mode="a")[KEY.path]["L0"]
    arr.resize((130, 8))  # a writer mid-commit: arrays written, rows part not yet
    arr[100:130] = np.full((30, 8), 7.0, np.float32)
    with StoreSQL(store) as q:
        assert q.query("SELECT count(*) AS n FROM act_L0").to_pylist()[0]["n"] == 100
        assert q.query("SELECT count(*) AS n FROM rows").to_pylist()[0]["n"] == 100
    assert store.activations(KEY, 0).shape == (100, 8)
