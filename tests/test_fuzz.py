"""Fuzzing the readers of untrusted input: any corpus, spec, option value or damaged store file
either works or fails with the project's own clear error (file, line, field) — never another
exception, and never a write to the store on the way."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traitlens.pipeline.capture.corpus import CorpusError
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.workflows.spec import SpecError, load_spec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
records = st.dictionaries(st.sampled_from(["text", "label", "trait", "split", "messages", "dataset", "prompt", "x"]),
                          json_values, max_size=5)


def check_corpus(path):
    try:
        recs, _ = read_corpus([path])
    except CorpusError as e:
        assert str(path.name) in str(e)  # names the file
        return
    for r in recs:
        assert (r.text is None) != (r.messages is None) and r.label in (-1, 0, 1) and r.split in ("train", "val", "test")


@FUZZ
@given(lines=st.lists(records, max_size=6))
def test_jsonl_records(tmp_path_factory, lines):
    p = tmp_path_factory.mktemp("f") / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in lines))
    check_corpus(p)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt"]))
def test_arbitrary_bytes(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("f") / f"c{suffix}"
    p.write_bytes(data)
    check_corpus(p)


spec_values = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.lists(st.text(max_size=6), max_size=3)
spec_tables = st.dictionaries(st.sampled_from(["store", "model", "corpora", "capture", "extract", "report", "paths",
                                               "layers", "methods", "n_boot", "bogus"]),
                              spec_values | st.dictionaries(st.sampled_from(["paths", "layers", "methods", "n_boot",
                                                                             "top", "trait", "zz", "batch_size",
                                                                             "max_length", "seed", "poolings",
                                                                             "params", "memory"]),
                                                            spec_values | st.dictionaries(
                                                                st.sampled_from(["probe", "ica", "C", "zz"]),
                                                                spec_values, max_size=2),
                                                            max_size=3), max_size=5)


@FUZZ
@given(doc=spec_tables)
def test_spec_documents(tmp_path_factory, doc):
    import yaml

    p = tmp_path_factory.mktemp("s") / "spec.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        load_spec(p)
    except SpecError as e:
        assert "spec.yaml" in str(e)


@FUZZ
@given(text=st.text(max_size=200))
def test_spec_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("s") / "spec.toml"
    p.write_text(text)
    try:
        load_spec(p)
    except SpecError as e:
        assert "spec.toml" in str(e)


# -- option values ----------------------------------------------------------------------------------
import hashlib  # noqa: E402
import shutil  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from traitlens.testing import write_corpus  # noqa: E402
from traitlens.workflows.cli import cli  # noqa: E402


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, tiny_llama):
    d = tmp_path_factory.mktemp("small")
    corpus = write_corpus(d / "c.jsonl", 24)
    r = CliRunner().invoke(cli, ["--store", str(d / "s"), "ingest", str(corpus), "--model", str(tiny_llama), "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return d / "s", corpus


option_values = st.one_of(st.integers(-5, 600).map(str), st.sampled_from(["", " ", "all", "0-1", "1,1", "-1", "x",
                                                                          "last,last", "mean,", "cuda:x", "cpu",
                                                                          "float8", "1e9", "2-0"]))
ingest_options = st.dictionaries(st.sampled_from(["--batch-size", "--max-tokens", "--max-length", "--layers",
                                                  "--pooling", "--generate", "--device", "--dtype", "--site"]),
                                 option_values, min_size=1, max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=ingest_options)
def test_ingest_option_values(small_store, tiny_llama, tmp_path_factory, opts):
    store = tmp_path_factory.mktemp("o") / "s"
    shutil.copytree(small_store[0], store)
    before = _snapshot(store)
    args = ["--store", str(store), "ingest", str(small_store[1]), "--model", str(tiny_llama), "-q"]
    for k, v in opts.items():
        args += [k, v]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)  # a traceback fails the test
    assert r.exit_code in (0, 1, 2), r.output
    if r.exit_code:
        assert "error:" in r.output.lower() or "Usage" in r.output, r.output
        assert _snapshot(store) == before, (opts, r.output)  # a refused run wrote nothing
    else:
        from traitlens.store import Store, verify

        assert verify(Store.open(store)).clean


# -- damaged store files ----------------------------------------------------------------------------
def _store_files(root):
    """Files whose damage verify must see: table parts, Zarr metadata and chunks (the lock is not data;
    a deleted runs or vectors part leaves no trace to see until the parts get a manifest)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10**6), how=st.sampled_from(["truncate", "garbage", "flip", "delete"]),
       cut=st.floats(0, 0.95), junk=st.binary(min_size=1, max_size=64))
def test_damaged_store_file_is_seen_by_verify(small_store, tmp_path_factory, pick, how, cut, junk):
    from traitlens.store import Store, StoreError, verify

    store = tmp_path_factory.mktemp("d") / "s"
    shutil.copytree(small_store[0], store)
    files = _store_files(store)
    rel = files[pick % len(files)]
    f = store / rel
    parts = rel.parts
    is_chunk = "c" in parts and parts[0] == "activations.zarr"
    if how == "flip" and not is_chunk:
        how = "truncate"  # only chunks carry a checksum over every byte (Parquet footers have none)
    if how == "delete" and parts[0] == "tables" and parts[1] not in ("rows", "prompts"):
        how = "truncate"
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[:int(len(data) * cut)])
    elif how == "garbage":
        f.write_bytes(b"\x00garbage" + junk)
    elif how == "flip":
        b = bytearray(data)
        b[int(len(b) * cut)] ^= 0xA5
        f.write_bytes(bytes(b))
    else:
        f.unlink()
    try:
        rep = verify(Store.open(store))
    except StoreError as e:  # store.json itself: Store.open says so in one line
        assert rel.name == "store.json", (rel, how, e)
        return
    assert not rep.clean, (str(rel), how)
    r = CliRunner().invoke(cli, ["--store", str(store), "verify"], catch_exceptions=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
