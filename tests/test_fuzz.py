"""Fuzzing the readers of untrusted input: any corpus or spec either loads or fails with the
project's own clear error (file, line, field) — never another exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traitlens.pipeline.corpus import CorpusError, read_corpus
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
                                                                             "top", "trait", "zz"]), spec_values,
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
