"""refusal_rate, first-token KL and ablation rows: heretic's pair of figures, on the tiny Llama.

Independent computations: greedy replies decoded one prompt at a time (unpadded) under a
hand-written hook and matched against the markers by hand; the KL written out with numpy at the
last prompt position of an unpadded forward; the ablation's damage read off the weight-edited
model (``weights.orthogonalised``), which holds no hook at all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.pipeline.steer import evaluate as ev

REQUESTS = ["How do I bake bread?", "Write a poem about the sea.", "Tell me about the fox.", "I love helping people",
            "the sky and the stars", "step by step"]
HARMLESS = ["What is a good way to spend a quiet afternoon?", "Describe the town you would most like to live in.",
            "How do you make a cup of tea?"]


@pytest.fixture(scope="module")
def lm(tiny_lms):
    return tiny_lms["llama"]


def _reply_by_hand(lm, text: str, tokens: int, vector=None, layer: int = 1, push: float = 0.0) -> str:
    """One greedy reply, unpadded, with ``push * unit(vector)`` added at block ``layer`` by a hand hook."""
    from traitlens.pipeline.model.encode import render_ids

    ids = torch.tensor([render_ids(lm.tokenizer, text, None, True)])
    handle = None
    if vector is not None:
        u = torch.tensor(np.asarray(vector, np.float32))
        u = u / u.norm()
        block = lm.model.model.layers[layer]
        handle = block.register_forward_hook(
            lambda m, i, o: (o[0] + push * u,) + tuple(o[1:]) if isinstance(o, tuple) else o + push * u)
    try:
        with torch.no_grad():
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        if handle:
            handle.remove()
    new = [t for t in out[0, ids.shape[1]:].tolist() if t != lm.tokenizer.eos_token_id]
    return lm.tokenizer.decode(new, skip_special_tokens=True)


def test_refusal_rate_counts_the_replies_holding_a_marker_as_decoding_by_hand_finds(lm):
    v = np.random.default_rng(0).standard_normal(lm.d_model)
    unit = ev.Evaluator(lm, "refusal_rate", REQUESTS, neutral=HARMLESS).scale(1)  # alpha's unit at layer 1
    plain = [_reply_by_hand(lm, t, 5) for t in REQUESTS]
    pushed = [_reply_by_hand(lm, t, 5, v, 1, 8.0 * unit) for t in REQUESTS]
    # markers that some replies hold and others do not (the tiny model never says "I cannot")
    words = sorted({w for r in plain + pushed for w in r.lower().split()})
    markers = [words[0], words[len(words) // 2]]
    e = ev.Evaluator(lm, "refusal_rate", REQUESTS, neutral=HARMLESS, reply_tokens=0,
                     refusal={"markers": markers, "max_new_tokens": 5})
    by_hand = lambda replies: np.array([any(m in " ".join(r.lower().split()) for m in markers)  # noqa: E731
                                        for r in replies], float)
    zero, on = e.at(v, 1, [0.0, 8.0])
    assert zero["unsteered"] == pytest.approx(by_hand(plain).mean()) and zero["shift"] == 0.0
    assert on["plus"] == pytest.approx(by_hand(pushed).mean())
    assert on["refusals"]["steered"]["markers"] == int(by_hand(pushed).sum())
    replies = [s["reply"] for s in on["samples"] if s["measure"] == "effect"]
    assert replies == pushed  # each sample keeps the reply its verdict read
    assert ev.MEASURES["refusal_rate"](lm, REQUESTS, markers, 5) == pytest.approx(by_hand(plain))


def test_a_judge_decides_where_it_answers_and_the_markers_where_it_was_rejected():
    class Judge:  # rates the three replies 80, unreadable, 10
        def rate(self, prompts, replies):
            return np.array([80.0, np.nan, 10.0]), ["rejected"]

    replies = ["Sure, here it is.", "I'm sorry, I can’t do that.", "I cannot help with that."]
    verdict, counts = ev.refusal_verdicts(replies, ev.REFUSAL_MARKERS, ["a", "b", "c"], Judge())
    assert verdict.tolist() == [1.0, 1.0, 0.0]  # the judge's 80 and 10; the markers for the rejected one
    assert counts == {"markers": 2, "judge": 1, "judge_rejected": 1}
    assert ev.is_refusal("I CAN’T   do that") and not ev.is_refusal("Here is how to bake bread.")


def test_first_token_kl_is_the_kl_of_the_reply_s_first_token_by_hand(lm):
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.steer.damage import next_token_kl_under
    from traitlens.pipeline.steer.steering import Push, steering

    v = np.random.default_rng(1).standard_normal(lm.d_model)
    got = next_token_kl_under(lm, {"p": [Push(v, 1, 2.0, 10.0)]}, HARMLESS, kl="first-token")["p"]
    whole = next_token_kl_under(lm, {"p": [Push(v, 1, 2.0, 10.0)]}, HARMLESS)["p"]
    for i, p in enumerate(HARMLESS):
        ids = torch.tensor([render_ids(lm.tokenizer, p, None, True)])
        with torch.no_grad():
            base = torch.softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1).numpy()
            with steering(lm, v, 1, 2.0, 10.0):
                steered = torch.softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1).numpy()
        assert got[i] == pytest.approx(float(np.sum(base * (np.log(base) - np.log(steered)))), rel=1e-3, abs=1e-7)
    assert not np.allclose(got, whole)  # the whole prompt's mean is another figure
    with pytest.raises(ValueError, match="all-positions, first-token"):
        next_token_kl_under(lm, {}, HARMLESS, kl="last")


def test_an_ablation_row_costs_what_the_weight_edited_model_costs(lm):
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.steer.steering import ablated
    from traitlens.pipeline.steer.weights import orthogonalised

    v = np.random.default_rng(2).standard_normal(lm.d_model)
    statements = ["I love helping people", "I enjoy causing trouble", "the sky and the stars"]
    e = ev.Evaluator(lm, "persona", statements, neutral=HARMLESS, reply_tokens=0, kl="first-token")
    row = e.ablated(v, 1)
    assert (row["operation"], row["alpha"], row["minus"], row["steerability"]) == ("ablate", None, None, None)
    with ablated(lm, [v]):
        plus = ev.yes_no_logodds(lm, statements)
    assert row["plus"] == pytest.approx(plus.mean()) and row["shift"] == pytest.approx(row["plus"] - row["unsteered"])
    edited, _ = orthogonalised(lm, [v])  # no hooks: the direction is gone from the weights
    kls = []
    for p in HARMLESS:
        ids = torch.tensor([render_ids(lm.tokenizer, p, None, True)])
        with torch.no_grad():
            base = torch.softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1).numpy()
            other = torch.softmax(edited(input_ids=ids).logits[0, -1].double(), -1).numpy()
        kls.append(float(np.sum(base * (np.log(base) - np.log(other)))))
    # (float32 logits: a KL of ~2e-4 agrees to ~0.1% between hooks and edited weights)
    assert row["kl"] == pytest.approx(np.mean(kls), rel=1e-2) and row["kl"] > 0 and row["kl_measure"] == "first-token"


def test_the_refusal_lines_read_like_heretic():
    from traitlens.pipeline.steer.records import refusal_lines

    head = {"kind": "refusal_rate", "n": 100, "unsteered": 0.03, "kl_measure": "first-token", "kl_low": 0.1,
            "kl_high": 0.2}
    rows = [{**head, "method": "mean_diff", "layer": 12, "alpha": 0.25, "operation": "add", "plus": 0.45, "kl": 0.16},
            {**head, "method": "mean_diff", "layer": 12, "alpha": None, "operation": "ablate", "plus": 0.01,
             "kl": 0.02}]
    lines = refusal_lines(rows)
    assert lines[0] == "refusals per 100 harmful requests, heretic's form (KL: first-token, nats):"
    assert lines[1] == "  unsteered: 3/100 [1, 8]"
    assert lines[2].split() == ["add", "mean_diff", "L12", "alpha", "0.25", "45/100", "[36,", "55]", "KL", "0.1600",
                                "[0.1000,", "0.2000]"]
    assert lines[3].split()[:4] == ["ablate", "mean_diff", "L12", "1/100"]
    assert refusal_lines([{**rows[0], "kind": "persona"}]) == []


def test_cli_evaluate_refusal_rate_with_ablation_and_first_token_kl(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff,random", "--quiet").exit_code == 0
    (tmp_path / "markers.txt").write_text("the\nFox\n")
    r = run("evaluate", "--trait", "kindness", "--steering", "--kind", "refusal_rate", "--refusal-markers",
            tmp_path / "markers.txt", "--model", tiny_llama, "--layers", "1", "--alphas", "4", "--n", "6",
            "--max-new-tokens", "4", "--reply-tokens", "0", "--ablate", "--kl", "first-token", "--plot",
            tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    assert "greedy replies of 4 tokens judged by 2 refusal markers; KL (first-token) on" in r.output
    assert "refusals per 100 harmful requests, heretic's form (KL: first-token, nats):" in r.output
    assert "(refusal_rate, n=5; KL: first-token)" in r.output
    rows = Store.open(store).table("steering").to_pylist()
    assert {(x["method"], x["operation"]) for x in rows} == {("mean_diff", "add"), ("random", "add"),
                                                             ("mean_diff", "ablate"), ("random", "ablate")}
    assert all(x["kl_measure"] == "first-token" and x["kind"] == "refusal_rate" for x in rows)
    assert all(x["alpha"] is None for x in rows if x["operation"] == "ablate")
    from traitlens.queries import StoreSQL
    from traitlens.workflows.report import _steering_section

    with StoreSQL(Store.open(store)) as q:  # the report shows the same figures, read back from the table
        section = "\n".join(_steering_section(q, "kindness", tmp_path, True, "refusal_rate", None))
    printed = r.output[r.output.index("refusals per 100"):].splitlines()[:6]
    assert all(line in section for line in printed)
    r = run("evaluate", "--trait", "kindness", "--steering", "--refusal-markers", tmp_path / "markers.txt",
            "--model", tiny_llama, "--plot", tmp_path / "e.png")
    assert r.exit_code == 2 and "--refusal-markers is for --kind refusal_rate" in r.output
