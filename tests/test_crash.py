"""kill -9 during ingest loses nothing committed; a rerun completes the store exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import write_corpus
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


def test_kill_9_mid_ingest_then_rerun_is_clean_and_equal_to_uninterrupted(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 900)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(ingest_cmd(ref, corpus, tiny_llama), check=True, env=env, capture_output=True)

    store_path = tmp_path / "s"
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        before = rows_parts(store_path)
        p = subprocess.Popen(ingest_cmd(store_path, corpus, tiny_llama), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while rows_parts(store_path) == before and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # somewhere after a commit: maybe mid-array-write
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
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
    assert runs[-1]["status"] == "done"
    for key in refstore.groups():
        ids = store.group_rows(key)["prompt_id"].to_pylist()
        assert len(ids) == len(set(ids)) == 900
        for layer in (0, 2):
            a, b = by_prompt(store, key, layer), by_prompt(refstore, key, layer)
            assert a.keys() == b.keys()
            np.testing.assert_allclose(np.stack([a[k] for k in sorted(a)]), np.stack([b[k] for k in sorted(b)]),
                                       rtol=2e-3, atol=2e-3)


def test_failure_between_arrays_and_rows_part_keeps_committed_data(tmp_path, tiny_lms, monkeypatch):
    from traitlens.pipeline.ingest import IngestConfig, ingest
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
