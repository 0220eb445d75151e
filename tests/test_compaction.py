"""Compaction: small parts merged into large ones, atomically for crashes and for readers.

Every check compares against the table as read before compaction, or against the parts read
directly with pyarrow (an independent computation): compaction must change the files, never
the rows or their order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pyarrow.dataset as pads
import pytest

from traitlens.queries import StoreSQL
from traitlens.store import GroupKey, PendingBatch, Store, verify
from traitlens.store import compaction, manifest, tables
from traitlens.store.tables import part_files

KEY = GroupKey("synthetic-model", "raw", "resid", "last")
D = 8


def small_commits_store(path, n: int, per_commit: int, lock: bool, layers=(0, 1)) -> Store:
    """A store whose rows table got one part per ``per_commit`` prompts (as a long ingest leaves
    it). ``lock``: write as ingest does, holding the writer lock (so compaction runs)."""
    store = Store.open(path, create=True)
    rng = np.random.default_rng(0)
    ids = [f"p{i:06d}" for i in range(n)]
    store.add_prompts([{"prompt_id": p, "text": f"prompt {p}", "dataset": "d", "trait": "t", "label": 1 - 2 * (i % 2),
                        "split": "train", "source": f"x:{i}"} for i, p in enumerate(ids)])
    with store.lock() if lock else nullcontext():
        w = store.writer([KEY], list(layers), D, "run-1", chunk_rows=per_commit)
        for s in range(0, n, per_commit):
            b = ids[s:s + per_commit]
            w.add(PendingBatch(prompt_ids=b, token_counts=np.full(len(b), 3, np.int32),
                               truncated=np.zeros(len(b), np.int32), responses=[None] * len(b),
                               pooled={("resid", "last"): {l: rng.standard_normal((len(b), D)).astype(np.float32)
                                                           for l in layers}}))
        w.commit()
    return store


def raw_rows(store: Store, table: str = "rows"):
    """Every part-* file of a table read directly, ignoring any manifest (valid before compaction)."""
    files = sorted(str(p) for p in (store.tables_path / table).glob("part-*.parquet"))
    return pads.dataset(files, format="parquet").to_table()


def test_writes_under_the_lock_compact_as_they_go_and_keep_every_row_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "AUTO_PARTS", 8)  # 300 commits: tier-0 bases, merged eight at a time into tier 1
    n, per = 2400, 8
    plain = small_commits_store(tmp_path / "plain", n, per, lock=False)
    assert len(part_files(plain.tables_path / "rows")) == n // per  # without the lock nothing is merged
    store = small_commits_store(tmp_path / "s", n, per, lock=True)
    live = part_files(store.tables_path / "rows")
    m = manifest.read_manifest(store.tables_path / "rows")
    assert m is not None and len(live) < compaction.AUTO_PARTS + 2 * compaction.FANOUT
    assert [b["tier"] for b in m.bases] == sorted([b["tier"] for b in m.bases], reverse=True)
    assert max(b["tier"] for b in m.bases) >= 1  # eight tier-0 bases were merged once more
    got = store.group_rows(KEY)
    want = raw_rows(plain).sort_by("row")
    assert got["prompt_id"].to_pylist() == want["prompt_id"].to_pylist() == [f"p{i:06d}" for i in range(n)]
    assert got["row"].to_pylist() == list(range(n))
    assert np.array_equal(store.activations(KEY, 1), plain.activations(KEY, 1))
    assert verify(store).clean


def test_compact_command_leaves_one_file_per_table_and_every_answer_unchanged(tmp_path):
    store = small_commits_store(tmp_path / "s", 600, 8, lock=False)
    for i in range(5):
        store.append("runs", [{"run_id": f"r{i}", "stage": "x", "status": "done"}])
    queries = ["SELECT count(*) AS n, count(DISTINCT prompt_id) AS u, sum(row) AS s FROM rows",
               "SELECT run_id FROM runs ORDER BY run_id", "SELECT prompt_id, label FROM prompts ORDER BY prompt_id"]
    with StoreSQL(store) as sql:
        before = [sql.query(q).to_pylist() for q in queries]
    rows_before = store.table("rows")
    p = subprocess.run([sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store.root), "compact",
                        "--grace", "0"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "tables/rows: 75 -> 1 files, 600 rows rewritten" in p.stdout
    for name in ("rows", "runs"):
        assert [f.name for f in part_files(store.tables_path / name)] == \
            [b["name"] for b in manifest.read_manifest(store.tables_path / name).bases]
        assert len(part_files(store.tables_path / name)) == 1
        assert not list((store.tables_path / name).glob("part-*"))  # grace 0: the replaced parts are gone
    with StoreSQL(store) as sql:
        assert [sql.query(q).to_pylist() for q in queries] == before
    assert store.table("rows").equals(rows_before)
    assert verify(store).clean
    again = subprocess.run([sys.executable, "-m", "traitlens.workflows.cli", "--store", str(store.root), "compact"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to compact" in again.stdout


def test_replaced_parts_outlive_the_switch_by_the_grace_then_go(tmp_path):
    store = small_commits_store(tmp_path / "s", 400, 8, lock=False)
    table_dir = store.tables_path / "rows"
    store.compact(["rows"], grace=3600)
    assert len(list(table_dir.glob("part-*"))) == 50  # kept for readers that listed them before the switch
    assert len(part_files(table_dir)) == 1 and store.table("rows").num_rows == 400
    assert verify(store).clean  # waiting out the grace is not damage
    os.environ["TRAITLENS_COMPACT_GRACE"] = "0"
    try:
        rep = verify(store)
        assert rep.clean and "await deletion" in rep.notes[0]  # harmless: no reader reads them
        verify(store, repair=True)
    finally:
        del os.environ["TRAITLENS_COMPACT_GRACE"]
    assert not list(table_dir.glob("part-*")) and verify(store).clean and store.table("rows").num_rows == 400


def _compacted(tmp_path, name="s"):
    store = small_commits_store(tmp_path / name, 300, 8, lock=False)
    want = store.table("rows")
    store.compact(grace=0)
    return store, want, store.tables_path / "rows"


def test_a_damaged_or_deleted_manifest_is_refused_then_rebuilt_from_the_bases_footers(tmp_path):
    for damage in ("garbage", "delete"):
        store, want, table_dir = _compacted(tmp_path, damage)
        path = table_dir / manifest.MANIFEST_NAME
        if damage == "garbage":
            path.write_text("{not json")
        else:
            path.unlink()
        with pytest.raises(Exception, match="_manifest.json.*verify --repair"):
            store.table("rows")
        rep = verify(store)
        assert rep.errors and "_manifest.json" in rep.errors[0]
        fixed = verify(store, repair=True)
        assert not fixed.errors and any("rebuilt" in t for t in fixed.tails)
        assert store.table("rows").equals(want)
        assert verify(store).clean


def test_verify_names_a_lost_or_replaced_base_and_repair_never_serves_it_twice(tmp_path):
    store, want, table_dir = _compacted(tmp_path)
    base = part_files(table_dir)[0]
    base.unlink()
    rep = verify(store, check_values=False)
    assert any(base.name in e and "missing" in e for e in rep.errors)
    # the rows' loss is also seen by the group's commit mark: never taken for an empty table
    assert any("committed rows have no rows record" in e for e in rep.errors)
    verify(store, repair=True)
    assert store.table("rows").num_rows == 0 and not verify(store).errors

    store2, _, table_dir2 = _compacted(tmp_path, "other")
    base2 = part_files(table_dir2)[0]
    small = small_commits_store(tmp_path / "donor", 40, 40, lock=False)
    os.replace(part_files(small.tables_path / "rows")[0], base2)  # a different file under the base's name
    assert any("manifest recorded 300" in e for e in verify(store2, check_values=False).errors)


def test_an_interrupted_compaction_is_rolled_back_or_finished(tmp_path):
    store, want, table_dir = _compacted(tmp_path)
    # rolled back: a complete base whose manifest swap never happened is invisible, then deleted
    orphan = table_dir / "base-000099-deadbeef.parquet"
    orphan.write_bytes(part_files(table_dir)[0].read_bytes())
    assert store.table("rows").equals(want)  # not read twice
    rep = verify(store)
    assert any("interrupted compaction" in t for t in rep.tails)
    verify(store, repair=True)
    assert not orphan.exists() and verify(store).clean and store.table("rows").equals(want)


def test_a_first_compaction_killed_before_its_switch_is_rolled_back_and_readers_never_notice(tmp_path, monkeypatch):
    """A table's first compaction, stopped between writing its base and the manifest swap (the
    state a SIGKILL there leaves; CI once caught it): the table reads as before, verify calls the
    base a rolled-back tail, not a lost manifest, and the next compaction finishes."""
    store = small_commits_store(tmp_path / "s", 300, 8, lock=False)
    want = store.table("rows")
    table_dir = store.tables_path / "rows"
    real = manifest.write_manifest

    def killed_at_switch(d, m):
        if m.bases:
            raise KeyboardInterrupt  # nothing in compact_table runs after this
        real(d, m)

    monkeypatch.setattr(manifest, "write_manifest", killed_at_switch)
    with pytest.raises(KeyboardInterrupt):
        store.compact(["rows"], grace=0)
    monkeypatch.setattr(manifest, "write_manifest", real)
    assert len(list(table_dir.glob("base-*"))) == 1  # the merged file is there, the switch is not
    assert store.table("rows").equals(want)  # a reader at this moment reads the parts, once
    rep = verify(store, check_values=False)
    assert not rep.errors, rep.errors
    assert any("interrupted compaction" in t for t in rep.tails)
    store.compact(["rows"], grace=0)
    assert len(part_files(table_dir)) == 1 and store.table("rows").equals(want) and verify(store).clean


def test_a_reader_during_compactions_sees_every_row_exactly_once(tmp_path):
    """A reader process loops over the rows table while this process rewrites it again and
    again with a zero grace (the harshest case: each replaced base vanishes at once)."""
    store = small_commits_store(tmp_path / "s", 800, 8, lock=False)
    code = f"""
import time
from traitlens.store import Store
s = Store.open({str(store.root)!r})
seen, t = [], time.time()
while time.time() - t < 5:
    seen.append(s.table('rows', columns=['prompt_id']).num_rows)
print(len(seen), sorted(set(seen)))
"""
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    table_dir, schema = store.tables_path / "rows", tables.ROWS_SCHEMA
    rounds, t = 0, time.time()
    while time.time() - t < 5:
        with store.lock():
            tables.write_part(table_dir, schema.empty_table(), schema)  # something to merge: the rows stay 800
            assert compaction.compact_table(table_dir, "rows", schema, full=True, grace=0) is not None
        rounds += 1
    out, _ = reader.communicate(timeout=60)
    n_reads, counts = out.split(" ", 1)
    assert rounds > 10 and int(n_reads) > 10 and json.loads(counts) == [800], out
    assert store.table("rows").num_rows == 800 and verify(store).clean


# A compaction that stops where it is told and waits there to be killed: the kill points are
# states of the compaction, not moments, so a fast machine cannot finish before its kill and a
# slow one is never killed too early. argv: store, point, k, marker file to create on arrival.
PAUSING_COMPACTION = """
import pathlib, sys, time
from traitlens.store import Store, compaction, manifest
root, point, k, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def pause():
    pathlib.Path(marker).touch()
    time.sleep(600)

def counting(real, when):
    seen = [0]
    def wrapped(*a, **kw):
        if when(*a, **kw):
            seen[0] += 1
            if seen[0] == k:
                pause()
        return real(*a, **kw)
    return wrapped

rows = lambda d: pathlib.Path(d).name == "rows"
if point == "locked":  # the lock taken, nothing written
    compaction.compact_table = lambda *a, **kw: pause()
elif point == "reading":  # the new base half written: k of its input files read (a .tmp-* is on disk)
    compaction._batches = counting(compaction._batches, lambda path, schema: True)
elif point == "renamed":  # the base complete under its name, the manifest not yet switched
    manifest.write_manifest = counting(manifest.write_manifest, lambda d, m: bool(m.bases))
elif point == "switched":  # the manifest switched, nothing it retired deleted yet
    compaction.delete_retired = counting(compaction.delete_retired, lambda d, *a, **kw: rows(d))
elif point == "deleting":  # k of the retired parts deleted
    pathlib.Path.unlink = counting(pathlib.Path.unlink, lambda p, *a, **kw: p.name.startswith("part-"))
Store.open(root).compact(grace=0)
"""
KILL_POINTS = [("locked", 1), ("reading", 1), ("reading", 500), ("reading", 999), ("renamed", 1),
               ("switched", 1), ("deleting", 1), ("deleting", 600), ("renamed", 1), ("reading", 250)]


@pytest.mark.slow  # real processes: `make test-fast` leaves it out
def test_kill_9_during_compaction_ten_times_loses_nothing_and_counts_everything_once(tmp_path):
    from traitlens.testing import end_all, wait_until

    template = small_commits_store(tmp_path / "template", 4000, 4, lock=False)  # 1,000 parts
    want = template.table("rows")
    root = tmp_path / "s"
    tmp_left = 0
    for attempt, (point, k) in enumerate(KILL_POINTS):
        store = Store.open(root) if root.exists() else None
        if store is None or len(part_files(store.tables_path / "rows")) <= 1:  # compacted last time: start over
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(template.root, root)
            store = Store.open(root)
        marker = tmp_path / f"at-{attempt}"
        p = subprocess.Popen([sys.executable, "-c", PAUSING_COMPACTION, str(root), point, str(k), str(marker)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            reached = wait_until(lambda: marker.exists() or p.poll() is not None)
            assert reached and marker.exists(), (point, k, p.poll(), p.poll() is not None and p.stderr.read())
            p.send_signal(signal.SIGKILL)
            p.wait()
        finally:
            p.kill()
            p.wait()
            end_all([p.pid])
        tmp_left += bool(list((store.tables_path / "rows").glob(".tmp-*")))
        rep = verify(store, check_values=False)
        assert not rep.errors, (point, k, rep.errors)  # a kill may leave an orphan base or a temporary, never damage
        assert store.table("rows").equals(want), (point, k)  # every prompt exactly once, in order, at every point
        if attempt % 3 == 2:
            verify(store, repair=True)
            assert verify(store, check_values=False).clean
    assert tmp_left >= 1 and list((store.tables_path / "rows").glob(".tmp-*"))  # the last kill left one
    store.compact(grace=0)  # what the kills left is swept by the next compaction alone
    assert not list((store.tables_path / "rows").glob(".tmp-*"))
    assert verify(store).clean and store.table("rows").equals(want)


def test_an_open_sql_connection_keeps_reading_through_a_compaction_within_the_grace(tmp_path):
    store = small_commits_store(tmp_path / "s", 200, 8, lock=False)
    with StoreSQL(store) as sql:  # lists the parts now
        store.compact()  # default grace: the replaced parts stay for readers like this one
        assert sql.query("SELECT count(*) AS n FROM rows")["n"][0].as_py() == 200
    tables.write_part(store.tables_path / "rows", tables.ROWS_SCHEMA.empty_table(), tables.ROWS_SCHEMA)
    with StoreSQL(store) as sql:
        store.compact(grace=0)  # no grace: an old listing meets vanished files, and says so in one line
        with pytest.raises(Exception, match="a compaction replaced this table's files.*run the query again"):
            sql.query("SELECT count(*) FROM rows")
    with StoreSQL(store) as sql:  # a new connection reads the new files
        assert sql.query("SELECT count(*) AS n FROM rows")["n"][0].as_py() == 200


def test_a_version_1_store_is_read_as_it_is_and_becomes_version_2_when_first_compacted(tmp_path):
    """Releases that read version 1 ignore manifests (they would read retired parts and miss the
    bases), so a store they could misread must carry a version they refuse."""
    store = small_commits_store(tmp_path / "s", 80, 8, lock=False)
    meta_path = store.root / "store.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": 1}))
    want = Store.open(store.root).table("rows")
    assert json.loads(meta_path.read_text())["version"] == 1  # reading does not upgrade
    store.compact()
    assert json.loads(meta_path.read_text())["version"] == 2
    assert Store.open(store.root).table("rows").equals(want)


def test_a_compaction_sweeps_the_temporary_base_a_killed_one_left_once_it_is_older_than_the_grace(tmp_path):
    """A kill while a base is being written leaves `.tmp-*-base-*.parquet`; later compactions
    used to leave it forever. Under the lock they delete it once it is older than the grace (a
    younger one could be a live writer's that does not take the lock)."""
    store = small_commits_store(tmp_path / "s", 80, 8, lock=False)
    table_dir = store.tables_path / "rows"
    left = table_dir / ".tmp-0badc0de-base-000001-0badc0de.parquet"
    left.write_bytes(part_files(table_dir)[0].read_bytes()[:50])  # half a file
    store.compact(["rows"], grace=3600)
    assert left.exists()  # just written: it could be live
    old = time.time() - 7200
    os.utime(left, (old, old))
    tables.write_part(table_dir, tables.ROWS_SCHEMA.empty_table(), tables.ROWS_SCHEMA)  # something to compact
    store.compact(["rows"], grace=3600)
    assert not left.exists()
    assert verify(store).clean and store.table("rows").num_rows == 80
