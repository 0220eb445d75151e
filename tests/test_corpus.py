"""Corpus readers: every accepted shape loads; every bad input names file, line, field and fix."""

from __future__ import annotations

import json

import pytest

from traitlens.pipeline.capture.corpus import CorpusError, ReadOptions, prompt_id_for
from traitlens.pipeline.capture.splits import hash_split
from traitlens.pipeline.capture.plan import read_corpus


def test_jsonl_with_persona_style_labels(tmp_path):
    p = tmp_path / "agreeableness.jsonl"
    p.write_text(json.dumps({"question": "Q?", "statement": "I am kind", "answer_matching_behavior": " Yes"}) + "\n"
                 + json.dumps({"question": "Q?", "statement": "I am cruel", "answer_matching_behavior": " No"}) + "\n")
    recs, dups = read_corpus([p])
    assert [(r.text, r.label, r.trait, r.dataset) for r in recs] == [
        ("I am kind", 1, "agreeableness", "agreeableness"), ("I am cruel", -1, "agreeableness", "agreeableness")]
    assert recs[0].extra == {"question": "Q?"}


def test_json_array_with_options(tmp_path):
    p = tmp_path / "harmful.json"
    p.write_text(json.dumps([{"instruction": "do a bad thing", "category": None}, {"instruction": "another"}]))
    recs, _ = read_corpus([p], ReadOptions(trait="refusal", label="pos", split="train"))
    assert {(r.trait, r.label, r.split) for r in recs} == {("refusal", 1, "train")}
    assert recs[0].extra == {"category": None}


def test_csv_and_messages_and_folder(tmp_path):
    c = tmp_path / "c.csv"
    c.write_text('text,label,split,topic\n"hello, world",true,validation,greet\nbye,false,test,greet\n')
    recs, _ = read_corpus([c])
    assert [(r.text, r.label, r.split, r.extra) for r in recs] == [
        ("hello, world", 1, "val", {"topic": "greet"}), ("bye", -1, "test", {"topic": "greet"})]
    m = tmp_path / "chat.jsonl"
    m.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "label": -1}) + "\n")
    (rec,), _ = read_corpus([m])
    assert rec.messages == [{"role": "user", "content": "hi"}] and rec.text is None and rec.label == -1
    d = tmp_path / "formality"
    d.mkdir()
    (d / "positive.txt").write_text("Dear Sir,\nKind regards\n")
    (d / "negative.txt").write_text("yo\n\nsup\n")
    recs, _ = read_corpus([d])
    assert sorted((r.text, r.label, r.trait) for r in recs) == [
        ("Dear Sir,", 1, "formality"), ("Kind regards", 1, "formality"), ("sup", -1, "formality"),
        ("yo", -1, "formality")]


def test_split_is_deterministic_and_roughly_80_10_10():
    ids = [prompt_id_for(f"prompt {i}", None) for i in range(5000)]
    splits = [hash_split(i) for i in ids]
    assert splits == [hash_split(i) for i in ids]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.77 < frac["train"] < 0.83 and 0.08 < frac["val"] < 0.12 and 0.08 < frac["test"] < 0.12


def test_prompt_id_is_content_only():
    assert prompt_id_for("a", None) == prompt_id_for("a", None) != prompt_id_for("b", None)
    assert prompt_id_for(None, [{"role": "user", "content": "a"}]) != prompt_id_for("a", None)


@pytest.mark.parametrize("content, line, needle", [
    (b'{"text": "ok", "label": 1}\n{"text": "broken"\n', 2, "malformed JSON"),
    (b'{"text": "ok"}\n{"prompt_text": "x"}\n', 2, "no text field"),
    (b'{"text": "ok"}\n{"text": "   "}\n', 2, "'text': is empty"),
    (b'{"text": "ok", "label": "maybe"}\n', 1, "unknown label value 'maybe'"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    (b'{"text": "ok", "split": "holdout"}\n', 1, "unknown split"),
    (b'{"text": 5}\n', 1, "must be a string"),
    (b'[1, 2]\n', 1, "expected a JSON object"),
    (b'{"messages": [{"role": "user"}]}\n', 1, "'messages'"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, line, needle):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(CorpusError) as e:
        read_corpus([p])
    assert f"bad.jsonl:{line}:" in str(e.value)
    assert needle in str(e.value)


def test_conflicting_duplicate_is_an_error_same_label_is_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "x", "label": 1}\n{"text": "x", "label": "pos"}\n')
    recs, dups = read_corpus([p])
    assert len(recs) == 1 and dups == 1
    p.write_text('{"text": "x", "label": 1}\n{"text": "x", "label": -1}\n')
    with pytest.raises(CorpusError, match=r"d.jsonl:2: field 'label': same prompt as .*d.jsonl:1"):
        read_corpus([p])


def test_labels_zero_policy(tmp_path):
    p = tmp_path / "z.jsonl"
    p.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert [r.label for r in read_corpus([p])[0]] == [0, 1]
    assert [r.label for r in read_corpus([p], ReadOptions(zero_is_negative=True))[0]] == [-1, 1]


def test_unknown_extension_and_missing_path(tmp_path):
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(CorpusError, match="unknown corpus type"):
        read_corpus([tmp_path / "x.xlsx"])
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus([tmp_path / "nope.jsonl"])


def test_malformed_csv_quote_is_an_error_not_a_merged_row(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\n"abc,1\nnext,0\n')
    with pytest.raises(CorpusError, match=r"q.csv:\d+: malformed CSV"):
        read_corpus([p])
