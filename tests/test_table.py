"""The table facade (``store.tables[name]``: append, read, live files, compact) and the storage
capabilities the store's code asks for (``store/location.py``) instead of asking which backend
a path is. The files are read back with pyarrow directly, independently of the store's readers."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
from upath import UPath

from traitlens.queries import StoreSQL
from traitlens.store import Store, verify
from traitlens.store.location import LOCAL_FOLDER, OBJECT_STORAGE, capabilities


def _runs(n: int) -> list[dict]:
    return [{"run_id": f"r{i}", "stage": "x", "status": "done", "code_version": "0", "config": "{}"} for i in range(n)]


def test_a_table_appends_reads_lists_and_compacts_through_one_facade(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    t = store.tables["runs"]
    parts = [t.append([r]) for r in _runs(5)]
    assert t.append([]) is None  # nothing to add: no empty part
    assert t.live_files() == parts  # every append is one part, listed in append order
    assert [pq.read_table(p)["run_id"].to_pylist() for p in parts] == [[f"r{i}"] for i in range(5)]
    assert t.read(["run_id"])["run_id"].to_pylist() == [f"r{i}" for i in range(5)] \
        == store.table("runs", ["run_id"])["run_id"].to_pylist()
    before = t.read()
    with store.lock():
        done = t.compact(full=True, grace=0)
    assert (done.files_before, done.files_after, done.rows) == (5, 1, 5)
    (base,) = t.live_files()
    assert base.name.startswith("base-") and pq.read_table(base)["run_id"].to_pylist() == [f"r{i}" for i in range(5)]
    assert t.read().equals(before) and not list(t.dir.glob("part-*"))  # grace 0: the replaced parts are gone
    assert verify(store).clean


def test_the_store_runs_the_object_storage_way_on_a_location_that_declares_it(tmp_path, monkeypatch):
    """A local folder reached through fsspec (a ``file://`` UPath) declares object storage's
    capabilities, and the store follows the declaration, not the disk under it: every file is
    one whole write (no temporary, no rename), the writer lock is a lease object, DuckDB gets
    no file access and reads through pyarrow. The rows come back the same."""
    root = UPath(f"file://{tmp_path}/u", auto_mkdir=True)
    assert capabilities(root) == OBJECT_STORAGE and capabilities(tmp_path) == LOCAL_FOLDER
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    store = Store.open(root, create=True)
    with store.lock():
        lease = json.loads((tmp_path / "u" / ".lock").read_text())
        assert lease["expires"] > 0  # a lease renewed by a heartbeat, not a flock's holder note
        for r in _runs(3):
            store.append("runs", [r])
        store.compact(["runs"], grace=0)
    assert not (tmp_path / "u" / ".lock").exists()  # the lease is given back
    assert renames == [] and not list((tmp_path / "u").rglob(".tmp-*"))
    (base,) = store.tables["runs"].live_files()
    assert pq.read_table(base.path)["run_id"].to_pylist() == ["r0", "r1", "r2"]
    with StoreSQL(store) as q:
        assert q.query("SELECT run_id FROM runs ORDER BY run_id")["run_id"].to_pylist() == ["r0", "r1", "r2"]
        assert q.query("SELECT current_setting('enable_external_access') AS x")["x"].to_pylist() == [False]
    assert verify(store).clean


def test_the_writer_lock_follows_the_file_locks_capability_not_the_path_type(tmp_path, monkeypatch):
    from dataclasses import replace

    from traitlens.store import lock

    store = Store.open(tmp_path / "s", create=True)
    with store.lock():
        assert "expires" not in json.loads((tmp_path / "s" / ".lock").read_text())  # flock: a holder note
    monkeypatch.setattr(lock, "capabilities", lambda path: replace(LOCAL_FOLDER, file_locks=False))
    with store.lock():
        assert json.loads((tmp_path / "s" / ".lock").read_text())["expires"] > 0  # a lease
