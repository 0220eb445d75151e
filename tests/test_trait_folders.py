"""``ingest DIR`` reads trait folders: trait-interp's layout (``positive.txt`` / ``negative.txt`` /
``definition.txt``, nested ``<category>/<trait>/`` at any depth) and a folder ``generate`` wrote
(its ``corpus.jsonl`` of chat records, not its cache or raw generations)."""

from __future__ import annotations

import json

import pytest

from traitlens.pipeline.capture.corpus import CorpusError
from traitlens.pipeline.capture.plan import read_corpus


def iter_records(path):
    """The records an ingest of ``path`` keeps, in reading order."""
    return read_corpus([path])[0]


def _sides(folder, pos, neg, definition="what it is"):
    folder.mkdir(parents=True)
    (folder / "positive.txt").write_text("\n".join(pos) + "\n")
    (folder / "negative.txt").write_text("\n".join(neg) + "\n")
    (folder / "definition.txt").write_text(definition + "\n")


def _generated(folder, trait):
    (folder / "cache").mkdir(parents=True)
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello, friend."}]
    (folder / "corpus.jsonl").write_text(json.dumps({"messages": chat, "trait": trait, "label": "+1",
                                                     "split": "test", "generation_id": "g1"}) + "\n")
    (folder / "generate.json").write_text(json.dumps({"trait": trait}))
    (folder / "generations.jsonl").write_text(json.dumps({"answer": "not a record"}) + "\n")
    (folder / "cache" / "calls.jsonl").write_text(json.dumps({"key": "k", "answer": "x"}) + "\n")


def test_a_tree_of_trait_interp_folders_reads_every_trait_by_its_folder_name(tmp_path):
    root = tmp_path / "datasets" / "traits"
    _sides(root / "emotion" / "joy", ["I am delighted", "What a day!"], ["I feel flat"])
    _sides(root / "style" / "formal", ["Dear Sir"], ["hey u"])
    recs = list(iter_records(root))
    got = sorted((r.trait, r.label, r.text) for r in recs)
    assert got == [("formal", -1, "hey u"), ("formal", 1, "Dear Sir"), ("joy", -1, "I feel flat"),
                   ("joy", 1, "I am delighted"), ("joy", 1, "What a day!")]
    assert not any("what it is" in r.text for r in recs)  # definition.txt is not a prompt
    assert {r.trait for r in iter_records(root / "emotion" / "joy")} == {"joy"}


def test_a_generate_folder_reads_its_corpus_only_beside_trait_interp_folders(tmp_path):
    _generated(tmp_path / "mine" / "sycophancy", "sycophancy")
    _sides(tmp_path / "mine" / "joy", ["yay"], ["meh"])
    recs = list(iter_records(tmp_path / "mine"))
    gen = [r for r in recs if r.trait == "sycophancy"]
    assert len(recs) == 3 and len(gen) == 1
    assert gen[0].has_assistant_turn and gen[0].split == "test" and gen[0].label == 1
    assert gen[0].extra["generation_id"] == "g1"
    assert [r.trait for r in iter_records(tmp_path / "mine" / "sycophancy")] == ["sycophancy"]


def test_an_interrupted_generate_folder_without_a_corpus_is_not_a_corpus(tmp_path):
    folder = tmp_path / "half"
    _generated(folder, "sycophancy")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(CorpusError, match="corpus.jsonl"):
        list(iter_records(folder))
