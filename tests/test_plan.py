"""Corpora of any length: an ingest validates the whole corpus in one streaming pass, decides in
DuckDB, and then holds one window of records at a time (pipeline/capture/plan.py)."""

from __future__ import annotations

import json
import weakref

import pytest

import pyarrow as pa
import pyarrow.json as pj

from traitlens.pipeline.capture import corpus, plan
from traitlens.pipeline.capture.readers import jsonl
from traitlens.pipeline.capture.corpus import CorpusError
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.store import GroupKey, Store, verify
from traitlens.testing import write_corpus


def test_an_ingest_holds_one_window_of_records_whatever_the_corpus_length(tmp_path, tiny_lms, monkeypatch):
    """Every record made is watched through a weak reference: at no point are more than a few
    windows' worth alive, although the corpus is 25 windows long (pass 1 makes none: see the next test)."""
    live, peak = [0], [0]
    real_record = corpus.PromptRecord

    def gone():
        live[0] -= 1

    def watch(rec):
        live[0] += 1
        weakref.finalize(rec, gone)  # runs when the record is freed
        peak[0] = max(peak[0], live[0])
        return rec

    monkeypatch.setattr(corpus, "PromptRecord", lambda *a, **k: watch(real_record(*a, **k)))
    lm = tiny_lms["llama"]
    n, window = 2500, 100
    c = write_corpus(tmp_path / "c.jsonl", n)
    r = ingest(tmp_path / "s", [c], cfg=IngestConfig(window=window, batch_size=50, poolings=["last"]), lm=lm,
               progress=False)
    assert (r.n_records, r.n_captured, r.n_new_prompts) == (n, n, n)
    assert 0 < peak[0] <= 3 * window, peak[0]  # the plan's window plus the encoder's, not the corpus
    store = Store.open(tmp_path / "s")
    ids = store.group_rows(GroupKey(lm.key, "chat", "resid", "last"))["prompt_id"].to_pylist()
    assert len(set(ids)) == n and store.prompts().num_rows == n
    assert verify(store).clean


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_pass_one_holds_one_block_of_the_corpus(tmp_path, monkeypatch, fmt):
    """The readers hand the scan Arrow batches (the line readers a batch of records): Arrow's
    memory at each batch stays a small part of the whole corpus's, whatever the format."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from traitlens.pipeline.capture.readers import batches, columnar

    c = write_corpus(tmp_path / "c.jsonl", 30_000)
    table = pj.read_json(c)
    if fmt == "parquet":
        c = tmp_path / "c.parquet"
        pq.write_table(table, c, row_group_size=500)
    elif fmt == "csv":
        c = tmp_path / "c.csv"
        pcsv.write_csv(table, c)
    peak = [0]
    real_attempts = plan.source_attempts

    def attempts(src, opts):
        def watched(attempt):
            def read():
                for b in attempt():
                    peak[0] = max(peak[0], pa.total_allocated_bytes())
                    yield b
            return read
        return [watched(a) for a in real_attempts(src, opts)]

    monkeypatch.setattr(plan, "source_attempts", attempts)
    monkeypatch.setattr(plan, "ROW_GROUP", 256)  # what the scan gathers before writing a row group
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 16_384)  # what the JSON reader parses at a time
    monkeypatch.setattr(columnar, "BATCH_ROWS", 500)
    monkeypatch.setattr(batches, "LINE_BATCH", 500)
    base = pa.total_allocated_bytes()
    with plan.scan_corpus([c]) as scan:
        scan.decide()
        assert scan.n_records == 30_000
    assert 0 < peak[0] - base < table.nbytes / 4, (peak[0] - base, table.nbytes)  # reading it whole: >= 1


def test_a_conflict_far_apart_is_refused_before_anything_is_written(tmp_path, tiny_lms):
    c = write_corpus(tmp_path / "c.jsonl", 3000)
    lines = c.read_text().splitlines()
    first = json.loads(lines[1])
    lines.append(json.dumps({**first, "label": "neg" if first["label"] == "pos" else "pos"}))  # line 3001
    c.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"c.jsonl:3001: field 'label': same prompt as .*c.jsonl:2 but label"):
        ingest(tmp_path / "s", [c], cfg=IngestConfig(window=64), lm=tiny_lms["llama"], progress=False)
    assert not (tmp_path / "s").exists()  # validation is whole-before-write: not even an empty store


def test_windows_keep_the_rules_across_their_boundaries(tmp_path, tiny_lms):
    """A prompt shared by two traits in far-apart windows is captured once; exact duplicates are
    counted, not stored; a relabel on re-ingest is the newest record, whichever window it is in."""
    lm = tiny_lms["llama"]
    a = write_corpus(tmp_path / "a.jsonl", 300, trait="kind")
    b = write_corpus(tmp_path / "b.jsonl", 300, trait="polite")  # the same 300 texts, another trait
    a.write_text(a.read_text() + a.read_text().splitlines()[5] + "\n")  # line 301 repeats line 6 exactly
    cfg = IngestConfig(window=32, poolings=["last"])
    r = ingest(tmp_path / "s", [a, b], cfg=cfg, lm=lm, progress=False)
    assert (r.n_records, r.n_captured, r.n_duplicates) == (600, 300, 1)
    rows = json.loads("[" + ",".join(b.read_text().splitlines()) + "]")
    rows[250]["label"] = "neg" if rows[250]["label"] == "pos" else "pos"
    b.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    r2 = ingest(tmp_path / "s", [a, b], cfg=cfg, lm=lm, progress=False)
    assert (r2.n_captured, r2.n_relabelled, r2.n_new_prompts) == (0, 1, 0)
    store = Store.open(tmp_path / "s")
    p = store.prompts().to_pylist()
    assert len(p) == 600
    changed = [x for x in p if x["trait"] == "polite" and x["source"].endswith(":251")]
    assert changed and changed[0]["label"] == (1 if rows[250]["label"] == "pos" else -1)


def test_read_corpus_and_the_plan_agree_with_a_plain_reading(tmp_path):
    """An independent computation: dedupe a corpus by hand and compare with the plan's choice."""
    a = write_corpus(tmp_path / "a.jsonl", 50)
    text = a.read_text().splitlines()
    a.write_text("\n".join(text + text[:7]) + "\n")  # seven exact repeats at the end
    records, dups = plan.read_corpus([a])
    assert dups == 7 and len(records) == 50
    assert [r.source for r in records] == [f"{a}:{i}" for i in range(1, 51)]


def test_a_key_is_relabelled_only_when_its_newest_stored_record_differs(tmp_path):
    """The plan compares the corpus with each key's newest stored record, whatever the history
    before it: a label corrected and corrected back is not a relabel, a stale old record that
    agrees with the corpus does not hide a newer one that does not."""
    c = write_corpus(tmp_path / "c.jsonl", 4)  # labels neg, pos, neg, pos
    lines = c.read_text().splitlines()  # the first record gives its split (one without keeps the stored one)
    c.write_text("\n".join([lines[0][:-1] + ', "split": "val"}'] + lines[1:]) + "\n")
    records, _ = plan.read_corpus([c])
    rows = [r.as_row() for r in records]
    flipped = [{**r, "label": -r["label"]} for r in rows]
    store = Store.open(tmp_path / "s", create=True)
    store.add_prompts(rows[:3])  # the fourth is new to the store
    store.add_prompts([flipped[1]])  # corrected...
    store.add_prompts([rows[1]])  # ...and corrected back: its newest record is the corpus's again
    store.add_prompts([flipped[2]])  # its old record agrees with the corpus, its newest does not
    store.add_prompts([{**rows[0], "split": "test"}])  # a newer split than the corpus gives
    with plan.scan_corpus([c]) as scan:
        scan.decide(store)
        flags = scan.flags
    assert [bool(f & plan.NEW) for f in flags] == [False, False, False, True]
    assert [bool(f & plan.RELABELLED) for f in flags] == [True, False, True, False]


def test_a_stored_part_written_before_a_column_existed_reads_null_in_it(tmp_path):
    """The plan has DuckDB read a local store's parts itself: a part without one of the table's
    columns (an older release's) reads NULL in it, as a read through the table's schema does,
    so a stored record without a split differs from a corpus record that gives one."""
    import pyarrow.parquet as pq

    c = write_corpus(tmp_path / "c.jsonl", 4)
    lines = c.read_text().splitlines()
    c.write_text("\n".join([lines[0][:-1] + ', "split": "val"}'] + lines[1:]) + "\n")
    rows = [r.as_row() for r in plan.read_corpus([c])[0]]
    store = Store.open(tmp_path / "s", create=True)
    store.add_prompts(rows[:3])  # the fourth is new to the store
    (part,) = store.tables["prompts"].live_files()
    pq.write_table(pq.read_table(part).drop_columns(["split"]), part)  # no split column, as once written
    assert store.table("prompts")["split"].null_count == 3  # (the schema's own reading)
    with plan.scan_corpus([c]) as scan:
        scan.decide(store)
        flags = scan.flags
    assert [bool(f & plan.NEW) for f in flags] == [False, False, False, True]
    assert [bool(f & plan.RELABELLED) for f in flags] == [True, False, False, False]


def test_a_scan_folder_left_by_a_killed_process_is_removed_by_the_next_scan(tmp_path, monkeypatch):
    """``kill -9`` of an ingest leaves its private scan folder (the corpus's keys) in the temp
    dir; the next scan removes the folders whose process is gone, and only those."""
    import os
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = tmp_path / f"{plan.SCAN_PREFIX}{int(gone.stdout)}-abc"  # its process has exited
    live = tmp_path / f"{plan.SCAN_PREFIX}{os.getppid()}-def"  # the process that started pytest runs
    own = tmp_path / f"{plan.SCAN_PREFIX}{os.getpid()}-ghi"  # another scan of this process
    other = tmp_path / f"{plan.SCAN_PREFIX}not-a-pid"  # not this scheme's: never touched
    for d in (dead, live, own, other):
        (d / "scan").mkdir(parents=True)
    c = tmp_path / "c.jsonl"
    write_corpus(c, 4)
    with plan.scan_corpus([c]) as scan:
        assert scan.folder.parent == tmp_path and scan.folder.name.startswith(f"{plan.SCAN_PREFIX}{os.getpid()}-")
        assert not dead.exists() and live.exists() and own.exists() and other.exists()
    assert not scan.folder.exists()
