"""The steering sweep: grid or Optuna search, the front, the pick, the floor, refresh skips;
`rank --by steering` side by side; the judge's parsing; reply damage against hand computations.

The sweep tests use a synthetic store and a fake evaluator whose shift and KL per setting are
known in closed form, so the right pick is computed independently of the sweep's rules."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.steer import rule
from traitlens.pipeline.steer import search as sw
from traitlens.testing import KEY, synthetic_store

LAYERS = (0, 1, 2, 3)


class FakeEvaluator:
    """shift = (layer + 1.5) * alpha for the trait's methods (probe twice mean_diff's), 0 for random;
    KL = layer * alpha**2; a tight interval around each shift."""

    def __init__(self, store):
        self.lm = types.SimpleNamespace(key=KEY.model_key)
        self.store_vectors = store.table("vectors").to_pylist()
        self.calls = []

    @staticmethod
    def truth(method, layer, alpha):
        gain = {"mean_diff": 1.0, "probe": 2.0}.get(method, 0.0)
        return gain * (layer + 1.5) * alpha, layer * alpha ** 2

    def at(self, vector, layer, alphas):
        m = self._method(vector, layer)
        self.calls += [(m, layer, a) for a in alphas]
        rows = []
        for a in alphas:
            shift, kl = self.truth(m, layer, a)
            rows.append({"layer": layer, "alpha": float(a), "kind": "persona", "n": 4, "scale": 1.0, "norm": "typical",
                         "unsteered": 0.0, "plus": shift, "minus": None, "shift": shift, "ci_low": shift - 0.01,
                         "ci_high": shift + 0.01, "wrong_way": 0.0, "wrong_way_low": 0.0, "wrong_way_high": 0.1,
                         "steerability": shift / a if a else 0.0, "kl": kl, "kl_low": kl, "kl_high": kl,
                         "samples": [{"measure": "effect", "sample": "s", "unsteered": 0.0, "plus": shift, "minus": None,
                                      "shift": shift}]})
        return rows

    def _method(self, vector, layer):
        v = np.asarray(vector)
        for r in self.store_vectors:
            if r["layer"] == layer and np.array_equal(np.asarray(r["vector"]), v):
                return r["method"]
        raise AssertionError("unknown vector")


@pytest.fixture()
def swept(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=160, d=8, layers=LAYERS, sep=4.0)
    extract(store.root, "planted", ["mean_diff", "probe", "random"], cfg=ExtractConfig(n_boot=0))
    return store, FakeEvaluator(store)


def test_a_small_grid_is_measured_whole_and_the_pick_is_the_best_shift_within_the_budget(swept):
    store, fake = swept
    alphas = [0.25, 0.5, 1.0]
    res = sw.sweep(store, "planted", fake, ["mean_diff", "probe"], list(LAYERS), alphas, kl_budget=0.5,
                   progress=False)
    assert res.search == "grid"
    trait_calls = [c for c in fake.calls if c[0] != "random"]
    assert sorted(trait_calls) == sorted((m, l, a) for m in ("mean_diff", "probe") for l in LAYERS for a in alphas)
    # independently: the best shift among settings with KL <= 0.5
    within = [(m, l, a) for m in ("mean_diff", "probe") for l in LAYERS for a in alphas
              if FakeEvaluator.truth(m, l, a)[1] <= 0.5]
    best = max(within, key=lambda s: FakeEvaluator.truth(*s)[0])
    p = res.pick
    assert (p["method"], p["layer"], p["alpha"]) == best
    # the floor: random at exactly the front's and the pick's (layer, alpha)
    floor = {(c[1], c[2]) for c in fake.calls if c[0] == "random"}
    assert floor == {(r["layer"], r["alpha"]) for r in res.front} | {(p["layer"], p["alpha"])}
    assert rule.shown_to_steer(p, rule.floor_at(res.rows, p)) is True
    # the front against brute force over the trait's settings
    pts = {s: FakeEvaluator.truth(*s) for s in trait_calls}
    brute = {s for s, (e, d) in pts.items()
             if not any(e2 >= e and d2 <= d and (e2 > e or d2 < d) for e2, d2 in pts.values())}
    assert {(r["method"], r["layer"], r["alpha"]) for r in res.front} == brute
    # detection (Cohen's d) against steering: the cells, and the correlation scipy gives
    rho, n = res.correlation()
    assert n == 8 and -1 <= rho <= 1
    agg, per = res.records("run-x")
    assert len(agg) == len(res.rows) and all(a["vector_id"] for a in agg) and len(per) == len(res.rows)


def test_a_large_grid_goes_through_optuna_for_the_trials_asked_and_measures_the_detection_pick(swept):
    store, fake = swept
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
    res = sw.sweep(store, "planted", fake, ["mean_diff", "probe"], list(LAYERS), alphas, kl_budget=1.0, trials=15,
                   grid_max=10, random_floor=False, progress=False)
    assert res.search.startswith("optuna") and "15 of 56 settings" in res.search
    trait_calls = [c for c in fake.calls if c[0] != "random"]
    assert len(trait_calls) == len(set(trait_calls)) == 15  # each setting measured once, a repeat answered from memory
    d = res.detection_pick
    assert {(d["method"], d["layer"], a) for a in alphas} <= set(trait_calls)  # enqueued first
    assert not [c for c in fake.calls if c[0] == "random"]
    # the search is steered by the objectives: beyond its random start it visits good settings more
    assert res.pick is not None and res.pick["kl"] <= 1.0


def test_cells_already_evaluated_are_skipped(swept):
    store, fake = swept
    first = sw.sweep(store, "planted", fake, ["mean_diff"], [0, 1], [0.5], progress=False, random_floor=False)
    done = {r["vector_id"] for r in first.rows}
    fake.calls.clear()
    again = sw.sweep(store, "planted", fake, ["mean_diff"], [0, 1, 2], [0.5], progress=False, random_floor=False,
                     skip=done)
    assert [c[1] for c in fake.calls] == [2] and [r["layer"] for r in again.rows] == [2]  # only the new layer
    fake.calls.clear()
    none = sw.sweep(store, "planted", fake, ["mean_diff"], [0, 1], [0.5], progress=False, skip=done)
    assert none.rows == [] and fake.calls == []


def test_rank_by_steering_prints_detection_and_steering_side_by_side(swept):
    from click.testing import CliRunner

    from traitlens.workflows.cli import cli

    store, fake = swept
    res = sw.sweep(store, "planted", fake, ["mean_diff", "probe"], list(LAYERS), [0.25, 0.5], kl_budget=0.1,
                   progress=False)
    res.save(store, "run-1")
    r = CliRunner().invoke(cli, ["--store", str(store.root), "rank", "--trait", "planted", "--by", "steering"])
    assert r.exit_code == 0, r.output
    header = r.output.splitlines()[0].split()
    assert "steer_shift" in header and "steer_kl" in header and "auroc" in header
    # the first row is the best shift within the metrics view's budget (KL_BUDGET), as computed here
    from traitlens.queries.budget import KL_BUDGET

    within = [(m, l, a) for m in ("mean_diff", "probe") for l in LAYERS for a in (0.25, 0.5)
              if FakeEvaluator.truth(m, l, a)[1] <= KL_BUDGET]
    m, l, a = max(within, key=lambda s: FakeEvaluator.truth(*s)[0])
    first = r.output.splitlines()[2].split()
    assert first[header.index("method")] == m and int(first[header.index("layer")]) == l
    assert f"steering pick (persona, largest shift within KL {KL_BUDGET:g}): {m} L{l} alpha {a:g}:" in r.output
    assert "detection pick:" in r.output and "Spearman" in r.output


def test_sample_slopes_equal_polyfit():
    from traitlens.pipeline.steer.plots import sample_slopes

    rng = np.random.default_rng(0)
    samples, truth = [], {}
    for i in range(5):
        u, p1, m1, p2, m2 = rng.standard_normal(5)
        samples += [{"measure": "effect", "method": "probe", "layer": 2, "alpha": 0.5, "sample": f"s{i}",
                     "unsteered": u, "plus": p1, "minus": m1},
                    {"measure": "effect", "method": "probe", "layer": 2, "alpha": 1.0, "sample": f"s{i}",
                     "unsteered": u, "plus": p2, "minus": m2}]
        truth[f"s{i}"] = np.polyfit([-1.0, -0.5, 0.0, 0.5, 1.0], [m2, m1, u, p1, p2], 1)[0]
    got = sample_slopes(samples + [{**samples[0], "layer": 3}], "probe", 2)
    assert got == pytest.approx([truth[f"s{i}"] for i in range(5)])


def test_the_steering_figure_is_written(tmp_path, swept):
    from traitlens.pipeline.steer.plots import steering_figure

    store, fake = swept
    res = sw.sweep(store, "planted", fake, ["mean_diff", "probe"], list(LAYERS), [0.25, 0.5], kl_budget=0.5,
                   progress=False)
    _, samples = res.records("r")
    out = steering_figure(res.rows, samples, "planted", tmp_path / "f.png", 0.5, "persona")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 20_000


# -- the judge ----------------------------------------------------------------------------------

def test_the_judge_parses_scores_and_rejects_malformed_answers_with_a_clear_message():
    from traitlens.pipeline.steer.judge import JudgeFormatError, parse_score, rubric

    assert parse_score("85") == 85.0 and parse_score(" Score: 42/100") == 42.0 and parse_score("7.5.") == 7.5
    assert parse_score("0") == 0.0 and parse_score("100 - very") == 100.0
    with pytest.raises(JudgeFormatError, match=r"reply 3 holds no number: 'I think it is kind'.*--judge"):
        parse_score("I think it is kind", "reply 3")
    with pytest.raises(JudgeFormatError, match="gives 150, outside 0-100"):
        parse_score("150", "reply 0")
    with pytest.raises(JudgeFormatError, match="outside 0-100"):
        parse_score("-5", "reply 0")
    q = rubric("desire-for-acquiring-power", "Tell me a story.", "I  want\n more", "seeks influence")
    assert "desire for acquiring power (seeks influence)" in q and "Reply: I want more" in q and "0 to 100" in q


def test_the_judge_path_scores_replies_and_counts_rejections(tiny_lms, monkeypatch):
    from traitlens.pipeline.steer import evaluate as ev
    from traitlens.pipeline.steer.judge import Judge

    lm = tiny_lms["llama"]
    judge = Judge(lm, "kindness")
    answers = iter(["80", "no idea", "30"] * 100)
    monkeypatch.setattr(Judge, "answers", lambda self, p, r: [next(answers) for _ in r])
    neutral = ["How do I bake bread?", "Write a poem about the sea.", "Tell me about the fox."]
    e = ev.Evaluator(lm, "persona", ["I love helping people", "step by step"], neutral=neutral, judge=judge,
                     reply_tokens=3)
    (row,) = e.at(np.ones(lm.d_model), 1, [1.0])
    assert row["judge"] == pytest.approx(55.0) and row["judge_rejected"] == pytest.approx(1 / 3)
    assert row["judge_unsteered"] == pytest.approx(55.0)
    assert len(e.rejected) == 2 and "holds no number: 'no idea'" in e.rejected[0]
    judged = [s for s in row["samples"] if s["measure"] == "judge"]
    assert [s["plus"] for s in judged] == [80.0, None, 30.0] and all(s["reply"] is not None for s in judged)


def test_the_judge_runs_the_real_generation_path_on_the_tiny_model(tiny_lms):
    """A random-weight judge writes no numbers: every answer is rejected, saying so (the code path
    tests/test_default_model.py runs with the default model as judge)."""
    from traitlens.pipeline.steer.judge import Judge

    scores, rejected = Judge(tiny_lms["llama"], "kindness", max_new_tokens=3).rate(["Hi?", "Why?"], ["Hello", "no"])
    assert len(scores) == 2
    assert all(math.isnan(s) for s in scores) == (len(rejected) == 2)
    assert all(0 <= s <= 100 for s in scores if not math.isnan(s))


# -- reply damage ---------------------------------------------------------------------------------

def test_reply_perplexity_and_distinct_2_against_hand_computations(tiny_lms):
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.steer.damage import distinct_n, reply_perplexity

    lm = tiny_lms["llama"]
    prompts = ["How do I bake bread?", "Write a poem about the sea.", "Hi"]
    replies = [[5, 6, 7, 8], [9, 10], []]
    got = reply_perplexity(lm, prompts, replies, batch_size=2)
    for p, r, g in zip(prompts, replies, got):
        if not r:
            assert math.isnan(g)
            continue
        head = render_ids(lm.tokenizer, p, None, True)
        with torch.no_grad():  # one unpadded conversation at a time
            lp = torch.log_softmax(lm.model(input_ids=torch.tensor([head + r])).logits[0].double(), -1)
        nll = -np.mean([lp[len(head) - 1 + j, t].item() for j, t in enumerate(r)])
        assert g == pytest.approx(math.exp(nll), rel=1e-4)
    assert distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([4, 4, 4, 4, 4], 2) == 0.25 and distinct_n([1, 2, 3], 2) == 1.0
    assert math.isnan(distinct_n([1], 2))
