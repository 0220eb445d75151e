"""The store on its own: commit protocol, tails, repair, float16 overflow, format checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitlens.store import GroupKey, PendingBatch, Store, StoreError, StoreLocked, safe_name, verify
from traitlens.store import tables

KEY = GroupKey("m-abc", "raw", "resid", "last")


def batch(ids, d=8, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return PendingBatch(prompt_ids=list(ids), token_counts=np.full(len(ids), 3, np.int32),
                        truncated=np.zeros(len(ids), np.int32), responses=[None] * len(ids),
                        pooled={("resid", "last"): {0: rng.normal(size=(len(ids), d)).astype(np.float32) * scale,
                                                    1: rng.normal(size=(len(ids), d)).astype(np.float32)}})


def new_store(tmp_path, ids):
    s = Store.open(tmp_path / "s", create=True)
    s.add_prompts([{"prompt_id": p, "text": p, "dataset": "d", "trait": "t", "label": 1, "split": "train"} for p in ids])
    return s


def test_commit_then_read_back(tmp_path):
    ids = [f"p{i}" for i in range(10)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "run1", chunk_rows=4)
    b1, b2 = batch(ids[:6], seed=1), batch(ids[6:], seed=2)
    w.add(b1), w.add(b2), w.commit()
    got = s.activations(KEY, 0)
    want = np.concatenate([b1.pooled[("resid", "last")][0], b2.pooled[("resid", "last")][0]])
    np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32))
    assert s.group_rows(KEY)["prompt_id"].to_pylist() == ids
    assert verify(s).clean


def test_commits_align_to_chunks(tmp_path):
    ids = [f"p{i}" for i in range(10)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "run1", chunk_rows=4)
    assert w.add(batch(ids[:3])) == 0  # below the first chunk boundary: buffered
    assert w.add(batch(ids[3:5])) == 5  # crosses it: committed
    assert s.committed(KEY).n_prompts == 5


def test_uncommitted_tail_is_reported_repaired_and_overwritten(tmp_path):
    ids = [f"p{i}" for i in range(8)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "run1", chunk_rows=4)
    w.add(batch(ids[:4]))
    # a crash after the arrays were written but before the rows part: arrays run ahead
    for layer in (0, 1):
        w._write(KEY, layer, 4, np.ones((3, 8), np.float32))
    rep = verify(s)
    assert not rep.errors and len(rep.tails) == 2 and not rep.clean
    rep = verify(s, repair=True)
    assert len(rep.repaired) == 2 and verify(s).clean
    assert s.zarr_root()[KEY.path]["L0"].shape == (4, 8)
    # a new writer resumes at the committed length
    w2 = s.writer([KEY], [0, 1], 8, "run2", chunk_rows=4)
    b = batch(ids[4:], seed=5)
    w2.add(b), w2.commit()
    np.testing.assert_allclose(s.activations(KEY, 1)[4:], b.pooled[("resid", "last")][1].astype(np.float16), rtol=1e-3)
    assert verify(s).clean


def test_duplicate_prompt_in_later_batch_is_not_stored_twice(tmp_path):
    ids = [f"p{i}" for i in range(4)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "r", chunk_rows=2)
    w.add(batch(ids[:2]))
    w.add(batch(ids[:4]))
    w.commit()
    assert s.group_rows(KEY)["prompt_id"].to_pylist() == ids
    assert verify(s).clean


def test_float16_overflow_promotes_layer_to_float32(tmp_path):
    ids = [f"p{i}" for i in range(6)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "r", chunk_rows=2)
    small = batch(ids[:2], seed=1)
    w.add(small)
    big = batch(ids[2:4], scale=1e6, seed=2)
    w.add(big)
    w.commit()
    arr = s.zarr_root()[KEY.path]
    assert arr["L0"].dtype == np.float32 and arr["L1"].dtype == np.float16
    assert w.promoted == [f"{KEY.path}/L0"]
    got = s.activations(KEY, 0)
    np.testing.assert_allclose(got[2:4], big.pooled[("resid", "last")][0], rtol=1e-6)
    np.testing.assert_allclose(got[:2], small.pooled[("resid", "last")][0].astype(np.float16), rtol=1e-6)
    assert verify(s).clean


def test_nonfinite_committed_values_are_errors(tmp_path):
    ids = ["a", "b"]
    s = new_store(tmp_path, ids)
    b = batch(ids)
    b.pooled[("resid", "last")][0][1, 3] = np.nan
    w = s.writer([KEY], [0, 1], 8, "r", chunk_rows=2)
    w.add(b)
    rep = verify(s)
    assert any("NaN or inf" in e for e in rep.errors)


def test_orphan_rows_and_leftover_temporaries(tmp_path):
    s = new_store(tmp_path, ["a"])
    w = s.writer([KEY], [0], 8, "r", chunk_rows=1)
    b = batch(["zzz"])
    del b.pooled[("resid", "last")][1]
    w.add(b)
    (s.tables_path / "rows" / ".tmp-123.parquet").write_bytes(b"partial")
    rep = verify(s)
    assert any("missing from the prompts table" in e for e in rep.errors)
    assert any(".tmp-123" in t for t in rep.tails)
    verify(s, repair=True)
    assert not (s.tables_path / "rows" / ".tmp-123.parquet").exists()


def test_format_version_and_refusals(tmp_path):
    s = Store.open(tmp_path / "s", create=True)
    meta = json.loads((s.root / "store.json").read_text())
    (s.root / "store.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(StoreError, match="format version 99"):
        Store.open(s.root)
    with pytest.raises(StoreError, match="no traitlens store"):
        Store.open(tmp_path / "missing")
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="refusing"):
        Store.open(tmp_path / "notempty", create=True)


def test_lock_is_exclusive_released_by_a_dead_holder_and_reentrant(tmp_path):
    from traitlens.testing import lock_held_elsewhere

    s = Store.open(tmp_path / "s", create=True)
    with lock_held_elsewhere(s.root, "first") as holder:
        with pytest.raises(StoreLocked, match="first"):
            with s.lock("second"):
                pass
        holder.kill()  # kill -9 of the holder: the kernel drops its lock
        holder.wait()
        with s.lock("after the holder died"):
            pass
    with s.lock("outer"):
        with s.lock("inner, same process"):  # a workflow holds it around ingest and extract
            pass


def test_safe_names_cannot_escape():
    assert "/" not in safe_name("../../etc/passwd") and not safe_name("../../x").startswith(".")
    with pytest.raises(ValueError):
        safe_name("../..")
    with pytest.raises(ValueError):
        GroupKey("../evil", "raw", "resid", "last")


def test_parts_are_atomic(tmp_path, monkeypatch):
    """A part is whole or absent: a write that fails half-way leaves no part and no temporary."""
    d = tmp_path / "t"
    run = {"run_id": "a", "stage": "x", "status": "done", "code_version": "0", "config": "{}"}
    tables.write_part(d, tables.rows_to_table([run], tables.RUNS_SCHEMA), tables.RUNS_SCHEMA)
    assert [p.name.startswith("part-") for p in d.iterdir()] == [True]
    real = tables.pq.write_table

    def half_then_fail(table, where, **kw):
        where.write(b"PAR1 half a part")  # some bytes reach the temporary file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tables.pq, "write_table", half_then_fail)
    with pytest.raises(OSError):
        tables.write_part(d, tables.rows_to_table([{**run, "run_id": "b"}], tables.RUNS_SCHEMA), tables.RUNS_SCHEMA)
    monkeypatch.setattr(tables.pq, "write_table", real)
    assert len(list(d.iterdir())) == 1  # the old part only: no torn part, no leftover temporary
    assert tables.read_table(d, tables.RUNS_SCHEMA)["run_id"].to_pylist() == ["a"]


def test_same_prompt_twice_in_one_commit_is_stored_once(tmp_path):
    s = new_store(tmp_path, ["a", "b", "c"])
    w = s.writer([KEY], [0, 1], 8, "r", chunk_rows=64)
    first = batch(["a", "b"], seed=1)
    w.add(first)
    w.add(batch(["b", "c"], seed=2))  # "b" again before any commit
    w.commit()
    assert s.group_rows(KEY)["prompt_id"].to_pylist() == ["a", "b", "c"]
    np.testing.assert_allclose(s.activations(KEY, 0)[1], first.pooled[("resid", "last")][0][1].astype(np.float16))
    assert verify(s).clean


def test_every_run_records_how_it_ended(tmp_path):
    from traitlens.pipeline.runtime.interrupts import Terminated

    s = Store.open(tmp_path / "s", create=True)
    with s.run("a", {"x": 1}) as r:
        r.counts = {"n": 3}
    for stage, exc in (("b", ValueError("bad value")), ("c", KeyboardInterrupt()), ("d", Terminated())):
        with pytest.raises(type(exc)):
            with s.run(stage, {}) as r:
                r.message = "nothing was kept"
                raise exc
    with s.run("quiet", {}, start=False):  # a run with nothing to do leaves no record
        pass
    with pytest.raises(RuntimeError):
        with s.run("quiet-fail", {}, start=False):
            raise RuntimeError("before it started")
    runs = {r["stage"]: r for r in s.runs().to_pylist()}
    assert set(runs) == {"a", "b", "c", "d"}
    assert runs["a"]["status"] == "done" and json.loads(runs["a"]["counts"]) == {"n": 3}
    assert runs["b"]["status"] == "failed" and runs["b"]["message"] == "ValueError: bad value; nothing was kept"
    assert runs["c"]["status"] == "interrupted" and runs["c"]["message"].startswith("interrupted (Ctrl-C)")
    assert runs["d"]["status"] == "interrupted" and runs["d"]["message"].startswith("terminated (SIGTERM)")


def test_idset_agrees_with_a_python_set(monkeypatch):
    """The writer's compact id set answers exactly as a plain set would, across merges."""
    import random

    import pyarrow as pa

    from traitlens.store import idset

    monkeypatch.setattr(idset, "MERGE_AT", 50)
    rng = random.Random(3)
    hexes = [f"{rng.getrandbits(96):024x}" for _ in range(400)]
    odd = ["p1", "prompt-ü", "x" * 40]  # other lengths and non-ASCII: the slow path
    s = idset.IdSet(pa.array(hexes[:200]))
    plain = set(hexes[:200])
    for chunk in (hexes[200:260], hexes[260:300], odd, hexes[300:390]):
        s.add_all(chunk)
        plain.update(chunk)
    probes = hexes + odd + [f"{rng.getrandbits(96):024x}" for _ in range(100)] + ["p", "x" * 41]
    assert [p in s for p in probes] == [p in plain for p in probes]
    assert len(s) == len(plain) and s.to_set() == plain
    assert idset.IdSet(pa.array(odd)).to_set() == set(odd)


def test_delegated_ranges_commit_in_order_and_a_float16_overflow_keeps_every_reserved_row(tmp_path):
    """What the Dask path does, without Dask: ranges handed out on chunk boundaries, written by
    "workers" (here: direct array writes), committed strictly in order; a range that overflows
    float16 comes back with values, and its promotion to float32 keeps the rows a later range
    already wrote but has not committed yet."""
    ids = [f"p{i}" for i in range(12)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "run", chunk_rows=4)
    assert w.can_delegate() and w.next_range() == 4
    ranges = [(w.reserve(4), ids[0:4], 1.0), (w.reserve(4), ids[4:8], 1e6), (w.reserve(4), ids[8:12], 1.0)]
    assert [r[0] for r in ranges] == [0, 4, 8]
    batches = {}
    for start, part, scale in ranges:
        b = batch(part, scale=scale, seed=start)
        batches[start] = b
        if scale == 1.0:  # the "worker" writes its own rows and returns metadata only
            for layer, v in b.pooled[("resid", "last")].items():
                w.arrays[(KEY, layer)][start:start + 4] = v.astype(np.float16)
    with pytest.raises(StoreError, match="out of order"):
        w.commit_delegated(8, PendingBatch(ids[8:12], np.full(4, 3, np.int32), np.zeros(4, np.int32), [None] * 4, {},
                                           written=True))
    for start in (0, 4, 8):
        b = batches[start]
        meta = b if start == 4 else PendingBatch(b.prompt_ids, b.token_counts, b.truncated, b.responses, {},
                                                 written=True)
        w.commit_delegated(start, meta)
    w.end_delegation()
    got = s.activations(KEY, 0)
    assert s.layer_array(KEY, 0).dtype == np.float32  # promoted for the overflowing range
    for start in (0, 8):
        np.testing.assert_array_equal(got[start:start + 4],
                                      batches[start].pooled[("resid", "last")][0].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got[4:8], batches[4].pooled[("resid", "last")][0])
    assert s.group_rows(KEY)["prompt_id"].to_pylist() == ids and verify(s).clean


def test_a_run_killed_while_creating_its_arrays_leaves_a_tail_not_damage(tmp_path):
    """zarr writes an array's folder before its zarr.json: a kill -9 in between (CI caught one
    during a first refresh) leaves a folder without metadata in a group with no committed row.
    Nothing committed is in it, so verify calls it a tail, repair removes it, and the next run
    writes the group as if it were new."""
    ids = [f"p{i}" for i in range(6)]
    s = new_store(tmp_path, ids)
    with s.lock():
        s.writer([KEY], [0, 1], 8, "run-1", chunk_rows=4)  # creates the arrays, then "dies": no commit
    meta = s.zarr_path / KEY.path / "L1" / "zarr.json"
    assert meta.exists()
    meta.unlink()
    rep = verify(s, check_values=False)
    assert not rep.errors, rep.errors
    assert any("L1: an array folder without zarr.json and no committed row" in t for t in rep.tails)
    verify(s, repair=True)
    assert not (s.zarr_path / KEY.path / "L1").exists() and verify(s).clean
    with s.lock():
        w = s.writer([KEY], [0, 1], 8, "run-2", chunk_rows=4)
        w.add(batch(ids))
        w.commit()
    assert verify(s).clean and s.activations(KEY, 1).shape == (6, 8)
    # with committed rows, the same loss is damage, never a tail
    (s.zarr_path / KEY.path / "L1" / "zarr.json").unlink()
    assert any("L1/zarr.json is missing" in e for e in verify(s, check_values=False).errors)


def test_a_state_read_for_its_counts_only_has_the_same_counts_and_no_ids(tmp_path):
    """``committed(key, ids=False)`` (what a rerun with nothing new checks the store with) skips
    the prompt ids: the same counts as a full read, and asking it for the ids is an error, not
    an empty set that would say no prompt is stored."""
    ids = [f"p{i}" for i in range(10)]
    s = new_store(tmp_path, ids)
    w = s.writer([KEY], [0, 1], 8, "run1", chunk_rows=4)
    w.add(batch(ids[:6])), w.commit()
    full, counts = s.committed(KEY), s.committed(KEY, ids=False)
    assert (counts.n_prompts, counts.array_rows, counts.rows_end) == (full.n_prompts, full.array_rows, full.rows_end) \
        == (6, 6, 6)
    assert counts.ids is None and sorted(full.prompt_ids.to_set()) == ids[:6]
    with pytest.raises(ValueError, match="without its prompt ids"):
        _ = counts.prompt_ids
    assert s.check_extend([KEY], [0, 1], 8, ids=False)[KEY].n_prompts == 6
    with pytest.raises(StoreError, match="layers"):  # the refusals are the same without the ids
        s.check_extend([KEY], [0], 8, ids=False)
