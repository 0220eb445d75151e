"""Corpus readers (``pipeline/capture/readers``): Parquet, Arrow IPC, ``datasets`` folders,
``.gz``/``.zst`` files, folders and globs give the records that the one set of rules gives
(``corpus.record_from_object``, computed here row by row on the same objects); the same corpus in
four formats gives the same prompts and the same activation rows; bad input is exit 2 naming
the file (and the columns it has), with nothing written."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traitlens.pipeline.capture.corpus import (CorpusError, ReadOptions, prompt_id_for, read_lines,
                                               record_from_object, records_of)
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.capture.readers import jsonl
from traitlens.pipeline.capture.readers.batches import source_attempts
from traitlens.pipeline.capture.readers.ids import text_ids
from traitlens.pipeline.capture.readers.normalise import NotExact
from traitlens.pipeline.capture.readers.sources import expand
from traitlens.store import Store
from traitlens.workflows.cli import cli

# the corpus every format writes: unicode, quotes, commas and a newline inside a text, labels as
# words, a trait and dataset per record, splits given and left to the hash, a string column the
# rules keep as ``extra``, and one duplicate (its first record is kept)
ROWS = [
    {"text": "Ich bin höflich, immer.", "label": "pos", "trait": "polite", "dataset": "demo", "split": "", "note": "de"},
    {"text": 'say "please"\nand thank you', "label": "pos", "trait": "polite", "dataset": "demo", "split": "validation",
     "note": ""},
    {"text": "go away", "label": "neg", "trait": "polite", "dataset": "demo", "split": "test", "note": "short"},
    {"text": "誰でも歓迎します", "label": "pos", "trait": "welcoming", "dataset": "demo", "split": "", "note": "ja"},
    {"text": "Nobody is welcome here.", "label": "neg", "trait": "welcoming", "dataset": "demo", "split": "train",
     "note": "x,y"},
    *({"text": f"#{i} " + " ".join(["word"] * (1 + i % 9)), "label": "pos" if i % 2 else "neg", "trait": "bulk",
       "dataset": "demo", "split": "", "note": str(i)} for i in range(30)),
    {"text": "go away", "label": "neg", "trait": "polite", "dataset": "demo", "split": "test", "note": "again"},
]
FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "csv.gz", "parquet", "parquet-folder", "parquet-glob", "arrow-file",
           "arrow-stream", "feather", "datasets"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def key(r) -> tuple:
    return r.prompt_id, r.text, r.messages, r.dataset, r.trait, r.label, r.split, r.extra


def by_the_rules(rows, opts=None, name="c") -> tuple[list[tuple], int]:
    """The definition: ``record_from_object`` on each row, the first of each (prompt, dataset,
    trait) kept, the splits it does not give by ``assign_splits``; and how many were duplicates."""
    from traitlens.pipeline.capture.splits import assign_splits

    out, seen = [], set()
    for i, obj in enumerate(rows, start=1):
        rec = record_from_object(obj, Path("x"), i, opts or ReadOptions(), name)
        if (rec.prompt_id, rec.dataset, rec.trait) not in seen:
            seen.add((rec.prompt_id, rec.dataset, rec.trait))
            out.append(rec)
    for rec, split in zip(out, assign_splits(out)):
        rec.split = split
    return [key(r) for r in out], len(rows) - len(out)


def write_compressed(path: Path, data: bytes) -> Path:
    codec = {".gz": "gzip", ".zst": "zstd"}[path.suffix]
    with pa.output_stream(str(path), compression=codec) as f:  # zstd from pyarrow: no extra package
        f.write(data)
    return path


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def save_dataset(rows_or_ds, folder: Path, features=None) -> Path:
    datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install -e '.[datasets]'")
    datasets.disable_progress_bars()
    ds = rows_or_ds if not isinstance(rows_or_ds, list) else datasets.Dataset.from_list(rows_or_ds, features=features)
    ds.save_to_disk(str(folder))
    return folder


def write_as(fmt: str, rows: list[dict], folder: Path) -> Path:
    """``rows`` written in ``fmt`` under ``folder``; returns the corpus argument (a path or a glob)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    if fmt == "jsonl":
        (folder / "c.jsonl").write_bytes(jsonl_bytes(rows))
        return folder / "c.jsonl"
    if fmt in ("jsonl.gz", "jsonl.zst"):
        return write_compressed(folder / f"c.{fmt}", jsonl_bytes(rows))
    if fmt == "csv.gz":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        return write_compressed(folder / "c.csv.gz", buf.getvalue().encode())
    if fmt == "parquet":
        pq.write_table(table, folder / "c.parquet", row_group_size=7)
        return folder / "c.parquet"
    if fmt == "parquet-folder":  # as Spark and pandas write them, with a marker file to skip
        (folder / "c").mkdir()
        for i, start in enumerate(range(0, len(rows), 12)):
            pq.write_table(table.slice(start, 12), folder / "c" / f"part-{i:05d}.parquet", row_group_size=5)
        (folder / "c" / "_SUCCESS").write_bytes(b"")
        (folder / "c" / ".part-00000.parquet.crc").write_bytes(b"\0")
        return folder / "c"
    if fmt == "parquet-glob":
        for i, start in enumerate(range(0, len(rows), 10)):
            pq.write_table(table.slice(start, 10), folder / f"c-{i}.parquet")
        pq.write_table(table.slice(0, 3), folder / "other.parquet")  # not matched
        return Path(str(folder / "c-*.parquet"))
    if fmt == "arrow-file":
        with pa.ipc.new_file(folder / "c.arrow", table.schema) as w:
            for b in table.to_batches(max_chunksize=8):
                w.write_batch(b)
        return folder / "c.arrow"
    if fmt == "arrow-stream":
        with pa.ipc.new_stream(folder / "c.arrow", table.schema) as w:
            for b in table.to_batches(max_chunksize=8):
                w.write_batch(b)
        return folder / "c.arrow"
    if fmt == "feather":
        feather.write_feather(table, folder / "c.feather", chunksize=9)
        return folder / "c.feather"
    if fmt == "datasets":
        return save_dataset(rows, folder / "c")
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_records_the_rules_give(tmp_path, fmt):
    corpus = write_as(fmt, ROWS, tmp_path / fmt)
    records, dups = read_corpus([corpus])
    assert ([key(r) for r in records], dups) == by_the_rules(ROWS)
    assert {r.split for r in records} == {"train", "val", "test"}


@pytest.mark.parametrize("fmt", ["parquet", "arrow-stream", "datasets", "jsonl.gz"])
def test_a_file_is_named_by_its_stem_and_a_folder_by_its_name(tmp_path, fmt):
    rows = [{k: v for k, v in r.items() if k not in ("trait", "dataset")} for r in ROWS[:5]]
    corpus = write_as(fmt, rows, tmp_path)
    records, _ = read_corpus([corpus])
    assert {(r.trait, r.dataset) for r in records} == {("c", "c")}
    src = records[2].source
    if fmt != "datasets":  # a datasets folder's records point into its shard
        assert src == f"{corpus}:3", src  # the third row (line) of the file


def test_one_corpus_in_four_formats_gives_identical_prompts_and_activation_rows(tmp_path, tiny_lms):
    from traitlens.pipeline.capture.ingest import IngestConfig, ingest

    lm = tiny_lms["llama"]
    cfg = IngestConfig(poolings=["last", "mean"], layers="0,2", batch_size=8)
    stores = {}
    for fmt in ("jsonl", "parquet", "jsonl.gz", "datasets"):
        corpus = write_as(fmt, ROWS, tmp_path / fmt)
        res = ingest(tmp_path / f"{fmt}.store", [corpus], cfg=cfg, lm=lm, progress=False)
        assert (res.n_records, res.n_duplicates, res.n_captured) == (len(ROWS) - 1, 1, len(ROWS) - 1)
        stores[fmt] = Store.open(tmp_path / f"{fmt}.store")

    def prompts(store):
        cols = ["prompt_id", "dataset", "trait", "label", "split", "text", "extra"]
        return sorted(tuple(r[c] for c in cols) for r in store.prompts().select(cols).to_pylist())

    def activations(store):
        out = {}
        for g in store.groups():
            ids = store.group_rows(g)["prompt_id"].to_pylist()
            for layer in (0, 2):
                x = store.activations(g, layer)
                out.update({(g.pooling, layer, p): x[i] for i, p in enumerate(ids)})
        return out

    want_p, want_x = prompts(stores["jsonl"]), activations(stores["jsonl"])
    assert len(want_p) == len(ROWS) - 1 and len(want_x) == 2 * 2 * (len(ROWS) - 1)
    for fmt in ("parquet", "jsonl.gz", "datasets"):
        assert prompts(stores[fmt]) == want_p, fmt
        got = activations(stores[fmt])
        assert got.keys() == want_x.keys(), fmt
        assert all(np.array_equal(got[k], want_x[k]) for k in want_x), fmt


def test_folders_mix_formats_in_name_order_and_globs_name_each_file(tmp_path):
    mix = tmp_path / "mix"
    mix.mkdir()
    write_compressed(mix / "a.jsonl.gz", jsonl_bytes(ROWS[:3]))
    pq.write_table(pa.Table.from_pylist(ROWS[3:6]), mix / "b.parquet")
    (mix / "sub").mkdir()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROWS[0]))
    w.writeheader()
    w.writerows(ROWS[6:9])
    write_compressed(mix / "sub" / "c.csv.gz", buf.getvalue().encode())
    (mix / "_SUCCESS").write_text("")
    (mix / ".DS_Store").write_bytes(b"\0\1")
    records, _ = read_corpus([mix])
    assert [key(r) for r in records] == by_the_rules(ROWS[:9])[0]
    assert [r.source.rsplit("/", 1)[-1] for r in records][::3] == ["a.jsonl.gz:1", "b.parquet:1", "c.csv.gz:2"]
    # a folder's files are parts of one corpus: named by the folder; a glob's files each by their own
    bare = [{"text": f"t{i}", "label": 1} for i in range(4)]
    (tmp_path / "g").mkdir()
    pq.write_table(pa.Table.from_pylist(bare[:2]), tmp_path / "g" / "b.parquet")
    pq.write_table(pa.Table.from_pylist(bare[2:]), tmp_path / "g" / "a.parquet")
    by_glob, _ = read_corpus([str(tmp_path / "g" / "*.parquet")])
    by_folder, _ = read_corpus([tmp_path / "g"])
    assert [(r.text, r.trait) for r in by_glob] == [("t2", "a"), ("t3", "a"), ("t0", "b"), ("t1", "b")]
    assert [(r.text, r.trait) for r in by_folder] == [("t2", "g"), ("t3", "g"), ("t0", "g"), ("t1", "g")]
    (mix / "notes.md").write_text("# notes\n")
    with pytest.raises(CorpusError, match=r"notes\.md.*unknown corpus type.*\.parquet"):
        read_corpus([mix])
    with pytest.raises(CorpusError, match="glob matches no file"):
        read_corpus([str(tmp_path / "g" / "*.jsonl")])
    pq.write_table(pa.Table.from_pylist(bare), tmp_path / "x.parquet")
    (tmp_path / "x.parquet.gz").write_bytes(gzip.compress((tmp_path / "x.parquet").read_bytes()))
    with pytest.raises(CorpusError, match="compress inside: decompress it first"):
        read_corpus([tmp_path / "x.parquet.gz"])


def test_gzip_of_several_members_and_zstd_of_several_frames_read_whole(tmp_path):
    """``cat a.gz b.gz > c.gz`` and ``zstd`` of concatenated frames are valid files of both rows."""
    import pyarrow as pa

    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl_bytes(ROWS[:4])) + gzip.compress(jsonl_bytes(ROWS[4:])))
    zst = tmp_path / "c.jsonl.zst"
    frames = []
    for part in (ROWS[:4], ROWS[4:]):
        buf = pa.BufferOutputStream()
        with pa.CompressedOutputStream(buf, "zstd") as f:
            f.write(jsonl_bytes(part))
        frames.append(buf.getvalue().to_pybytes())
    zst.write_bytes(b"".join(frames))
    for p in (gz, zst):
        records, dups = read_corpus([p])
        assert ([key(r) for r in records], dups) == by_the_rules(ROWS)


def test_column_options_and_auto_detection_on_columnar_files(tmp_path):
    persona = [{"question": "Q?", "statement": "I am kind", "answer_matching_behavior": " Yes"},
               {"question": "Q?", "statement": "I am cruel", "answer_matching_behavior": " No"}]
    pq.write_table(pa.Table.from_pylist(persona), tmp_path / "agreeable.parquet")
    records, _ = read_corpus([tmp_path / "agreeable.parquet"])
    assert [(r.text, r.label, r.extra) for r in records] == [("I am kind", 1, {"question": "Q?"}),
                                                              ("I am cruel", -1, {"question": "Q?"})]
    # any column names, chosen by the options; 1/0 labels read as +1/-1 with --zero-is-negative
    own = [{"body": "first text", "y": 1, "id": 7}, {"body": "second text", "y": 0, "id": 8}]
    pq.write_table(pa.Table.from_pylist(own), tmp_path / "own.parquet")
    opts = ReadOptions(text_column="body", label_column="y", zero_is_negative=True)
    records, _ = read_corpus([tmp_path / "own.parquet"], opts)
    assert [key(r) for r in records] == by_the_rules(own, opts, "own")[0]
    assert [(r.text, r.label, r.extra) for r in records] == [("first text", 1, {"id": 7}), ("second text", -1, {"id": 8})]
    # chat turns in a list<struct<role, content>> column: the same prompts as JSONL's messages
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]]
    pq.write_table(pa.table({"conversation": chats, "label": ["pos", "neg"]}), tmp_path / "chat.parquet")
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": m, "label": l}) + "\n"
                                                 for m, l in zip(chats, ["pos", "neg"])))
    from_parquet, _ = read_corpus([tmp_path / "chat.parquet"], ReadOptions(messages_column="conversation"))
    from_jsonl, _ = read_corpus([tmp_path / "chat.jsonl"])
    assert [r.messages for r in from_parquet] == chats
    assert [(r.prompt_id, r.label, r.split) for r in from_parquet] == [(r.prompt_id, r.label, r.split)
                                                                       for r in from_jsonl]
    assert [r.prompt_id for r in from_parquet] == [prompt_id_for(None, m) for m in chats]
    pq.write_table(pa.table({"messages": chats}), tmp_path / "auto.parquet")  # found without the option
    assert [r.messages for r in read_corpus([tmp_path / "auto.parquet"])[0]] == chats
    # a named column the file lacks: the columns it has, and the flag
    with pytest.raises(CorpusError, match=r"no column 'text' \(--text-column\) \(its columns: body, y, id\)"):
        read_corpus([tmp_path / "own.parquet"], ReadOptions(text_column="text"))
    with pytest.raises(CorpusError, match=r"no column 'score' \(--label-column\)"):
        read_corpus([tmp_path / "own.parquet"], ReadOptions(text_column="body", label_column="score"))


@pytest.mark.parametrize("column", ["sentence", "query"])
def test_a_sentence_or_query_column_is_the_text_in_parquet_and_jsonl(tmp_path, column):
    """SST-2-style corpora (idx, sentence, label) and query-keyed ones ingest with no option."""
    rows = [{"idx": 0, column: "a gripping, funny film", "label": 1},
            {"idx": 1, column: "a tedious mess", "label": -1}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sst.parquet")
    (tmp_path / "sst.jsonl").write_bytes(jsonl_bytes(rows))
    for path in (tmp_path / "sst.parquet", tmp_path / "sst.jsonl"):
        records, _ = read_corpus([path])
        assert [(r.text, r.label, r.extra) for r in records] == [("a gripping, funny film", 1, {"idx": 0}),
                                                                  ("a tedious mess", -1, {"idx": 1})], path


def test_datasets_class_labels_read_as_their_names_and_a_dataset_dict_keeps_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install -e '.[datasets]'")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = [{"sentence": f"sentence {i}", "label": i % 2} for i in range(6)]
    folder = save_dataset(rows, tmp_path / "sst", features)
    opts = ReadOptions(text_column="sentence")  # (GLUE's name for it: not among the names detected)
    records, _ = read_corpus([folder], opts)
    assert [(r.text, r.label, r.trait, r.dataset) for r in records] == [
        (f"sentence {i}", 1 if i % 2 else -1, "sst", "sst") for i in range(6)]  # not the indices 0/1
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.to_parquet(str(tmp_path / "sst.parquet"))  # datasets' Parquet export carries the class names too
    assert [key(r) for r in read_corpus([tmp_path / "sst.parquet"], opts)[0]] == [key(r) for r in records]
    dd = datasets.DatasetDict({"train": ds.select(range(3)), "validation": ds.select([3, 4]), "test": ds.select([5])})
    save_dataset(dd, tmp_path / "dd")
    records, _ = read_corpus([tmp_path / "dd"], opts)
    assert [(r.text, r.split, r.dataset) for r in records] == [
        ("sentence 0", "train", "dd"), ("sentence 1", "train", "dd"), ("sentence 2", "train", "dd"),
        ("sentence 3", "val", "dd"), ("sentence 4", "val", "dd"), ("sentence 5", "test", "dd")]


# --- bad input: exit 2 naming the file, nothing written --------------------------------------------------------------

def damaged_corpora(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """``{case: (corpus, what the message must say)}``."""
    folder.mkdir()
    good = pa.Table.from_pylist(ROWS)
    pq.write_table(pa.table({"body": ["a", "b"], "y": [1, 0]}), folder / "notext.parquet")
    pq.write_table(good, folder / "footer.parquet", row_group_size=7)
    raw = (folder / "footer.parquet").read_bytes()
    n = int.from_bytes(raw[-8:-4], "little")  # the footer's length; the length and the magic are kept
    (folder / "footer.parquet").write_bytes(raw[:-8 - n] + b"\xff" * n + raw[-8:])
    pq.write_table(good, folder / "cut.parquet")
    (folder / "cut.parquet").write_bytes((folder / "cut.parquet").read_bytes()[:-100])
    gz = write_compressed(folder / "cut.jsonl.gz", jsonl_bytes(ROWS * 20)).read_bytes()
    (folder / "cut.jsonl.gz").write_bytes(gz[:len(gz) // 2])
    zst = write_compressed(folder / "cut.jsonl.zst", jsonl_bytes(ROWS * 20)).read_bytes()
    (folder / "cut.jsonl.zst").write_bytes(zst[:len(zst) // 2])
    with pa.ipc.new_stream(folder / "cut.arrow", good.schema) as w:
        w.write_table(good)
    (folder / "cut.arrow").write_bytes((folder / "cut.arrow").read_bytes()[:-200])
    bad_row = [dict(r) for r in ROWS]
    bad_row[20]["label"] = "maybe"
    pq.write_table(pa.Table.from_pylist(bad_row), folder / "label.parquet", row_group_size=7)
    parts = folder / "parts"  # a good part, then a bad one: the good one is not stored either
    parts.mkdir()
    pq.write_table(good, parts / "part-0.parquet")
    pq.write_table(pa.table({"body": ["a"]}), parts / "part-1.parquet")
    return {
        "no text column": (folder / "notext.parquet", ["notext.parquet", "no text column", "its columns: body, y",
                                                       "--text-column"]),
        "corrupt Parquet footer": (folder / "footer.parquet", ["footer.parquet", "not a readable Parquet file"]),
        "truncated Parquet": (folder / "cut.parquet", ["cut.parquet", "not a readable Parquet file"]),
        "truncated gzip": (folder / "cut.jsonl.gz", ["cut.jsonl.gz", "cannot decompress this gzip file"]),
        "truncated zstd": (folder / "cut.jsonl.zst", ["cut.jsonl.zst", "cannot decompress this zstd file"]),
        "truncated Arrow stream": (folder / "cut.arrow", ["cut.arrow", "not a readable Arrow IPC file"]),
        "bad label in row 21": (folder / "label.parquet", ["label.parquet:21:", "'label'", "unknown label value"]),
        "a bad part after a good one": (parts, ["part-1.parquet", "its columns: body"]),
    }


def test_bad_corpora_exit_2_naming_the_file_and_write_nothing(tmp_path, tiny_llama):
    cases = damaged_corpora(tmp_path / "bad")
    good = write_as("jsonl", ROWS[:6], tmp_path / "good")
    for case, (corpus, says) in cases.items():  # into no store: none is created
        r = run("--store", tmp_path / "new.store", "ingest", corpus, "--model", tiny_llama, "-q")
        assert r.exit_code == 2, (case, r.output)
        assert all(s in r.output for s in says), (case, r.output)
        assert not (tmp_path / "new.store").exists(), case
    store = tmp_path / "s"
    assert run("--store", store, "ingest", good, "--model", tiny_llama, "-q").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    for case, (corpus, says) in cases.items():  # a good corpus beside a bad one: neither is stored
        r = run("--store", store, "ingest", good, corpus, "--model", tiny_llama, "-q")
        assert r.exit_code == 2 and all(s in r.output for s in says), (case, r.output)
        assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before, case


def test_a_hub_id_is_refused_at_once_with_the_commands_that_save_it(tmp_path, tiny_llama, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("traitlens tried to connect")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    for arg, repo, folder in (("Anthropic/hh-rlhf", "Anthropic/hh-rlhf", "hh-rlhf"),
                              ("hf://datasets/stanfordnlp/imdb", "stanfordnlp/imdb", "imdb")):
        r = run("--store", tmp_path / "s", "ingest", arg, "--model", tiny_llama, "-q")
        assert r.exit_code == 2, r.output
        assert "Hugging Face dataset id" in r.output and "never downloads" in r.output
        assert f"load_dataset('{repo}').save_to_disk('{folder}')" in r.output, r.output
        assert f"traitlens ingest {folder}" in r.output, r.output
        assert not (tmp_path / "s").exists()
    # a missing local file is not taken for an id
    r = run("--store", tmp_path / "s", "ingest", "data/missing.jsonl", "--model", tiny_llama, "-q")
    assert r.exit_code == 2 and "no such file" in r.output and "Hugging Face" not in r.output, r.output


# --- --limit and --sample ---------------------------------------------------------------------------------------------

def run_config(store: Path) -> dict:
    runs = Store.open(store).runs().to_pylist()
    return json.loads([r for r in runs if r["stage"] == "ingest"][-1]["config"])


def stored_ids(store: Path) -> set[str]:
    return set(Store.open(store).prompts()["prompt_id"].to_pylist())


def sample_by_hand(rows, n: int, seed: int, first: int | None = None) -> set[str]:
    """The ``n`` kept keys of the first ``first`` rows with the smallest sha256("seed:id:dataset:trait")."""
    keys = {(p, ds, tr) for p, _, _, ds, tr, *_ in by_the_rules(rows[:first])[0]}
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k[0]}:{k[1]}:{k[2]}".encode()).hexdigest())
    return {k[0] for k in ranked[:n]}


def test_limit_and_sample_choose_reproducibly_and_are_recorded_in_the_run(tmp_path, tiny_llama):
    corpus = write_as("parquet", ROWS, tmp_path / "c")
    ingest = ["ingest", corpus, "--model", tiny_llama, "-q", "--pooling", "last", "--layers", "0"]
    r = run("--store", tmp_path / "limit", *ingest, "--limit", "7")
    assert r.exit_code == 0 and "7 prompts captured" in r.output, r.output
    assert stored_ids(tmp_path / "limit") == {k[0] for k in by_the_rules(ROWS[:7])[0]}
    assert run_config(tmp_path / "limit")["read"]["limit"] == 7
    r = run("--store", tmp_path / "a", *ingest, "--sample", "10", "--seed", "3")
    assert r.exit_code == 0 and "10 prompts captured" in r.output, r.output
    assert stored_ids(tmp_path / "a") == sample_by_hand(ROWS, 10, 3)
    assert {k: run_config(tmp_path / "a")["read"][k] for k in ("sample", "seed", "limit")} == \
        {"sample": 10, "seed": 3, "limit": None}
    r = run("--store", tmp_path / "a", *ingest, "--sample", "10", "--seed", "3")  # the same sample again
    assert r.exit_code == 0 and "0 prompts captured, 10 already stored" in r.output, r.output
    r = run("--store", tmp_path / "b", *ingest, "--sample", "10", "--seed", "4")
    assert stored_ids(tmp_path / "b") == sample_by_hand(ROWS, 10, 4) != stored_ids(tmp_path / "a")
    r = run("--store", tmp_path / "both", *ingest, "--limit", "20", "--sample", "5", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert stored_ids(tmp_path / "both") == sample_by_hand(ROWS, 5, 3, first=20)
    r = run("--store", tmp_path / "x", *ingest, "--sample", "0")
    assert r.exit_code == 2 and "--sample" in r.output


# --- the vectorised paths against the rules ---------------------------------------------------------------------------

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(texts=st.lists(st.text(min_size=1, max_size=40) | st.text(min_size=3000, max_size=5000), min_size=1,
                      max_size=12))
def test_vectorised_ids_are_the_per_record_ones(texts):
    ids = text_ids(pa.array(texts, pa.string()))
    assert ids.to_pylist() == [prompt_id_for(t, None) for t in texts]


scalars = (st.none() | st.booleans() | st.integers(-2, 2) | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=6) | st.sampled_from(["pos", "neg", "validation", "test", "0", "-1", " ", "\u3000x"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                       max_size=3), max_leaves=6)
turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                        "content": st.text(max_size=5)}), max_size=3)
# records the rules accept, keys present or not, values of every JSON type in the other columns
valid = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=12).filter(str.strip)},
    optional={"label": st.sampled_from(["pos", "neg", 1, -1, 0, True, False, "yes", "", None, 1.0, " No"]),
              "trait": st.sampled_from(["a", "b", "", None, 3]), "dataset": st.sampled_from(["d", "", None]),
              "split": st.sampled_from(["train", "validation", "test", "", None]), "x": scalars, "y": json_values,
              "messages": st.none() | turns})
# anything at all, most of it refused
anything = st.dictionaries(st.sampled_from(["text", "label", "trait", "split", "dataset", "prompt", "x", "y"]),
                           scalars, max_size=6) | st.builds(lambda o, m: {**o, "messages": m}, valid, turns)
corpora = st.lists(valid, min_size=1, max_size=8) | st.lists(anything, min_size=1, max_size=8)
options = st.sampled_from([ReadOptions(), ReadOptions(label="pos"), ReadOptions(zero_is_negative=True),
                           ReadOptions(split="test"), ReadOptions(trait="t", dataset="d")])


def outcome(read):
    """Keys and line (row) of every record read, or the error's file, line and field."""
    try:
        return [key(r) + (r.source.rsplit(":", 1)[-1],) for r in read()]
    except CorpusError as e:
        return "error", e.line, e.field


def readers_records(path: Path, opts: ReadOptions) -> list:
    """Every record the readers give for ``path``, as the plan reads them: the fast attempt,
    or the next one where it gives way (no de-duplication: that is the plan's)."""
    out = []
    for src in expand([path]):
        for attempt in source_attempts(src, opts):
            try:
                out += [r for b in attempt() for r in records_of(b)]
                break
            except NotExact:
                continue
    return out


@FUZZ
@given(objs=corpora, blank=st.booleans(), opts=options)
def test_arrow_s_reading_of_json_lines_is_the_line_reader_s(tmp_path_factory, monkeypatch, objs, blank, opts):
    """Arrow parses blocks of lines; wherever its reading could differ (a missing key, a widened
    number, a nested object, an error) the line reader reads the file: the records, their line
    numbers and the error are the line reader's."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 64)  # many blocks, lines cut at block ends
    p = tmp_path_factory.mktemp("j") / "c.jsonl"
    body = "".join(json.dumps(o) + ("\n\n" if blank and i % 2 else "\n") for i, o in enumerate(objs))
    p.write_text(("\n" if blank else "") + body)
    assert outcome(lambda: readers_records(p, opts)) == outcome(lambda: read_lines(p, "jsonl", "c", opts))


@FUZZ
@given(objs=corpora, opts=options)
def test_the_columnar_readers_records_are_the_rules_records(tmp_path_factory, objs, opts):
    """A Parquet row is the object ``{column: value}``: its record is record_from_object's (a
    file whose column types Arrow cannot unite is not a Parquet file anyone could write)."""
    p = tmp_path_factory.mktemp("p") / "c.parquet"
    try:
        table = pa.Table.from_pylist(objs)
        pq.write_table(table, p, row_group_size=3)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return
    if not table.num_columns:
        return
    rows = table.to_pylist()
    definition = outcome(lambda: [record_from_object(o, p, i, opts, "c") for i, o in enumerate(rows, start=1)])
    got = outcome(lambda: readers_records(p, opts))
    if definition[0] == "error":
        assert got[0] == "error"  # (a missing text column is refused for the file, before its rows)
    else:
        assert got == definition


def test_a_spec_takes_the_same_corpus_options_and_refuses_bad_ones(tmp_path):
    from traitlens.store.errors import InputError
    from traitlens.workflows.spec import SpecError, load_spec

    pq.write_table(pa.table({"body": ["a", "b"], "y": [1, 0]}), tmp_path / "c.parquet")

    def spec(corpus: str):
        path = tmp_path / "s.toml"
        path.write_text(f'store = "s.store"\n[[corpora]]\npaths = ["c.parquet"]\n{corpus}\n')
        return load_spec(path, check_values=True)

    (c,) = spec('text_column = "body"\nlabel_column = "y"\nsample = 1\nseed = 7\nlimit = 2').corpora
    opts = ReadOptions.from_options(c.options)
    assert (opts.text_column, opts.label_column, opts.sample, opts.seed, opts.limit) == ("body", "y", 1, 7, 2)
    assert ReadOptions.from_options(spec('text_field = "body"').corpora[0].options).text_column == "body"  # old name
    with pytest.raises(SpecError, match=r"corpora\[0\]\.sample must be at least 1"):
        spec("sample = 0")
    with pytest.raises(SpecError, match="text_column is given twice"):
        spec('text_column = "body"\ntext_field = "other"')
    with pytest.raises(InputError, match="given twice"):
        ReadOptions.from_options({"label_column": "y", "label_field": "z"})
