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
from traitlens.pipeline.steer.settings import SweepConfig
from traitlens.testing import KEY, synthetic_store

LAYERS = (0, 1, 2, 3)


class FakeEvaluator:
    """shift = (layer + 1.5) * alpha for the trait's methods (probe twice mean_diff's), 0 for random;
    KL = layer * alpha**2; a tight interval around each shift."""

    def __init__(self, store):
        self.lm = types.SimpleNamespace(key=KEY.model_key, n_layers=16)
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
    res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(LAYERS),
                                                   alphas=alphas, kl_budget=0.5, early_stop=False), progress=False)
    assert res.search == "grid" and res.skipped == []
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
    # detection (held-out Cohen's d) against steering (the best shift within the budget), by hand:
    # the fake's shifts and the stored vectors' d, ranked and correlated (Spearman = Pearson of ranks)
    cells = [(m, l) for m in ("mean_diff", "probe") for l in LAYERS]
    d = {(v["method"], v["layer"]): v["cohens_d"] for v in store.table("vectors").to_pylist()}
    steer = {c: max(FakeEvaluator.truth(*c, a)[0] for a in alphas if FakeEvaluator.truth(*c, a)[1] <= 0.5)
             for c in cells}
    rho, n = res.correlation()
    assert n == 8 and rho == pytest.approx(spearman_by_hand([d[c] for c in cells], [steer[c] for c in cells]))
    agg, per = res.records("run-x")
    assert len(agg) == len(res.rows) and all(a["vector_id"] for a in agg) and len(per) == len(res.rows)


def test_early_stop_skips_exactly_the_larger_alphas_after_a_kl_interval_above_the_budget_and_keeps_the_pick(swept):
    """By default a cell's alphas go in ascending size (per sign) and stop once a row's KL
    interval lies wholly above the budget. Which settings that skips is computed here from the
    fake's closed-form KL (its interval is the point), and the pick must be the whole grid's."""
    store, fake = swept
    alphas, budget = [-1.0, -0.5, -0.25, 0.25, 0.5, 1.0], 0.1
    grid = [(m, l, a) for m in ("mean_diff", "probe") for l in LAYERS for a in alphas]
    res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(LAYERS),
                                                   alphas=alphas, kl_budget=budget, grid_max=len(grid)),
                   progress=False)
    kl = lambda m, l, a: FakeEvaluator.truth(m, l, a)[1]  # noqa: E731
    expect = {(m, l, a) for m, l, a in grid
              if any(kl(m, l, b) > budget for b in alphas if (b > 0) == (a > 0) and abs(b) < abs(a))}
    assert expect and len(expect) < len(grid)  # the grid holds both: some stopped, some not
    skipped = {(s["method"], s["layer"], s["alpha"]) for s in res.skipped}
    trait_calls = [c for c in fake.calls if c[0] != "random"]
    assert skipped == expect and len(res.skipped) == len(expect)
    assert sorted(trait_calls) == sorted(set(grid) - expect)  # the rest measured, each once
    for s in res.skipped:  # each names the measured row that stopped it: same cell and sign, smaller, over budget
        after = s["after"]
        assert (s["method"], s["layer"], after["alpha"]) in set(trait_calls) and after["kl_low"] > budget
        assert (after["alpha"] > 0) == (s["alpha"] > 0) and abs(after["alpha"]) < abs(s["alpha"])
    # the pick is the whole grid's: the best shift with KL within the budget (ties: lower KL)
    within = [g for g in grid if kl(*g) <= budget]
    best = max(within, key=lambda g: (FakeEvaluator.truth(*g)[0], -kl(*g)))
    assert (res.pick["method"], res.pick["layer"], res.pick["alpha"]) == best
    plan = "\n".join(res.plan_lines())
    assert f"measured {len(grid) - len(expect)} settings (grid)" in plan and f"skipped {len(expect)} by early stop" in plan
    assert "--no-early-stop" in plan


def test_a_large_grid_goes_through_optuna_for_the_trials_asked_and_measures_the_detection_pick(swept):
    store, fake = swept
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
    res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(LAYERS),
                                                   alphas=alphas, kl_budget=1.0, trials=15, grid_max=10,
                                                   random_floor=False), progress=False)
    assert res.search.startswith("optuna") and "15 of 56 settings" in res.search
    trait_calls = [c for c in fake.calls if c[0] != "random"]
    assert len(trait_calls) == len(set(trait_calls)) == 15  # each setting measured once, a repeat answered from memory
    d = res.detection_pick
    assert {(d["method"], d["layer"], a) for a in alphas} <= set(trait_calls)  # enqueued first
    assert not [c for c in fake.calls if c[0] == "random"]
    # the pick is the largest shift within the budget among the settings the search measured
    within = [c for c in trait_calls if FakeEvaluator.truth(*c)[1] <= 1.0]
    best = max(within, key=lambda c: (FakeEvaluator.truth(*c)[0], -FakeEvaluator.truth(*c)[1]))
    assert (res.pick["method"], res.pick["layer"], res.pick["alpha"]) == best


def spearman_by_hand(x, y) -> float:
    """Spearman's rho written out: the Pearson correlation of the two rank vectors (no ties here)."""
    assert len(set(x)) == len(x) and len(set(y)) == len(y)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _row(method, layer, alpha, shift, kl):
    return {"method": method, "layer": layer, "alpha": alpha, "shift": shift, "kl": kl}


def test_detection_against_steering_is_spearmans_rho_of_the_best_shift_within_the_budget():
    """Rows built so that rho is known: the same order (+1), the reverse (-1), one swap of
    neighbours among five (1 - 6 * 2 / (5 * 24) = 0.9), on values far from linear (a Pearson
    correlation would differ). A cell's steering figure is its best shift within the budget: a
    larger shift over the budget, and the random direction, must not count."""
    layers = [0, 1, 2, 3, 4]
    rows = [_row("probe", l, 0.1, 3.0 ** l, 0.05) for l in layers]
    rows += [_row("probe", l, 0.5, 1000.0 - l, 0.5) for l in layers]  # over the budget: reversed, ignored
    rows += [_row("random", l, 0.1, 100.0 - l, 0.01) for l in layers]  # the floor: ignored
    rising = {("probe", l): float(l) ** 3 for l in layers}
    assert sw.detection_vs_steering(rows, rising, kl_budget=0.1) == (pytest.approx(1.0), 5)
    falling = {k: -v for k, v in rising.items()}
    assert sw.detection_vs_steering(rows, falling, kl_budget=0.1) == (pytest.approx(-1.0), 5)
    swapped = {**rising, ("probe", 1): 8.0, ("probe", 2): 1.0}
    assert sw.detection_vs_steering(rows, swapped, kl_budget=0.1) == (pytest.approx(0.9), 5)
    # with the budget raised, the reversed rows are the best shifts within it
    assert sw.detection_vs_steering(rows, rising, kl_budget=1.0) == (pytest.approx(-1.0), 5)
    rho, n = sw.detection_vs_steering(rows[:2], rising, kl_budget=0.1)  # two cells: no correlation
    assert n == 2 and math.isnan(rho)


HILL_LAYERS, HILL_PEAK = tuple(range(8)), 5


class HillEvaluator(FakeEvaluator):
    """A landscape with one good region: the probe near layer 5 moves the trait most for the KL
    that alpha costs everywhere (KL = alpha**2, shift = gain * bump(layer) * alpha)."""

    @staticmethod
    def truth(method, layer, alpha):
        gain = {"mean_diff": 1.0, "probe": 2.0}.get(method, 0.0)
        return gain * math.exp(-((layer - HILL_PEAK) / 1.5) ** 2) * alpha, alpha ** 2


def test_the_search_visits_the_good_settings_far_more_often_than_random_sampling(tmp_path):
    """Optuna's multi-objective TPE against uniform sampling of the same number of settings: the
    search's own choices (the detection pick's row, enqueued first, left out) land in the good
    region (probe at layers 4-6: 30 of 160 settings) far more often. Three search seeds against
    random sampling's 99.9th percentile over 2,000 seeded draws: deterministic, with a wide margin."""
    store, _ = synthetic_store(tmp_path / "s", n=160, d=8, layers=HILL_LAYERS, sep=4.0)
    extract(store.root, "planted", ["mean_diff", "probe"], cfg=ExtractConfig(n_boot=0))
    alphas = [round(0.1 * k, 1) for k in range(1, 11)]
    grid = [(m, l, a) for m in ("mean_diff", "probe") for l in HILL_LAYERS for a in alphas]
    good = {s for s in grid if s[0] == "probe" and abs(s[1] - HILL_PEAK) <= 1}
    searched, n_own = 0, []
    for seed in range(3):
        fake = HillEvaluator(store)
        res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(HILL_LAYERS),
                                                       alphas=alphas, trials=40, seed=seed, random_floor=False),
                       progress=False, log=lambda *a: None)
        d = res.detection_pick
        enqueued = {(d["method"], d["layer"], a) for a in alphas}
        own = [c for c in fake.calls if c not in enqueued]
        assert len(own) == len(set(own)) == 40 - len(enqueued)
        searched += sum(c in good for c in own)
        n_own.append((len(own), sorted(set(grid) - enqueued)))
    rng = np.random.default_rng(0)
    draws = [sum(sum(pool[i] in good for i in rng.choice(len(pool), k, replace=False)) for k, pool in n_own)
             for _ in range(2000)]
    assert searched > np.quantile(draws, 0.999) and searched >= 2 * np.mean(draws), (searched, np.mean(draws))


def test_cells_already_evaluated_are_skipped(swept):
    store, fake = swept
    first = sw.sweep(store, "planted", fake, SweepConfig(layers=[0, 1], alphas=[0.5], random_floor=False),
                     progress=False)
    done = {r["vector_id"] for r in first.rows}
    fake.calls.clear()
    again = sw.sweep(store, "planted", fake, SweepConfig(layers=[0, 1, 2], alphas=[0.5], random_floor=False),
                     progress=False, skip=done)
    assert [c[1] for c in fake.calls] == [2] and [r["layer"] for r in again.rows] == [2]  # only the new layer
    fake.calls.clear()
    none = sw.sweep(store, "planted", fake, SweepConfig(layers=[0, 1], alphas=[0.5]), progress=False, skip=done)
    assert none.rows == [] and fake.calls == []


def test_rank_by_steering_prints_detection_and_steering_side_by_side(swept):
    from click.testing import CliRunner

    from traitlens.workflows.cli import cli

    store, fake = swept
    res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(LAYERS),
                                                   alphas=[0.25, 0.5], kl_budget=0.1), progress=False)
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
    res = sw.sweep(store, "planted", fake, SweepConfig(methods=["mean_diff", "probe"], layers=list(LAYERS),
                                                   alphas=[0.25, 0.5], kl_budget=0.5), progress=False)
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


def judge_answers_by_hand(lm, judge, prompts, replies) -> list[str]:
    """What the judge must answer, computed without its batched path: each rubric question in the
    chat template, alone and unpadded, continued by argmax one forward at a time up to the first
    end-of-sequence token, decoded."""
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.model.generation import eos_token_ids
    from traitlens.pipeline.steer.judge import rubric

    eos, out = eos_token_ids(lm), []
    for p, r in zip(prompts, replies):
        ids = render_ids(lm.tokenizer, rubric(judge.trait, p, r, judge.description), None, True)
        new = []
        for _ in range(judge.max_new_tokens):
            with torch.no_grad():
                t = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if t in eos:
                break
            new.append(t)
        out.append(lm.tokenizer.decode(new, skip_special_tokens=True))
    return out


def assert_rated_as_answered(judge, prompts, replies, answers) -> None:
    """``judge.rate`` gives each answer's first number as its score (NaN where there is none in
    0-100) and one rejection per NaN, naming the reply and quoting the answer."""
    from traitlens.pipeline.steer.judge import NUMBER

    scores, rejected = judge.rate(prompts, replies)
    want = []
    for a in answers:
        m = NUMBER.search(a)
        want.append(float(m.group()) if m and 0 <= float(m.group()) <= 100 else math.nan)
    assert scores.tolist() == pytest.approx(want, nan_ok=True)
    bad = [i for i, w in enumerate(want) if math.isnan(w)]
    assert len(rejected) == len(bad)
    for i, msg in zip(bad, rejected):
        assert f"reply {i} (to {prompts[i][:40]!r})" in msg and repr(answers[i][:80]) in msg


def test_the_judge_runs_the_real_generation_path_on_the_tiny_model(tiny_lms):
    """The judge's answers are the model's own greedy continuations of the rubric (batched and
    left-padded, equal to one unpadded prompt at a time), and each becomes a score or a named
    rejection (a random-weight judge writes no numbers: its answers are rejected, quoted)."""
    from traitlens.pipeline.steer.judge import Judge

    lm = tiny_lms["llama"]
    judge = Judge(lm, "kindness", "warm", max_new_tokens=4)
    prompts, replies = ["Hi?", "Why is the sky blue, please?", "Tell me a story."], ["Hello", "no", "Once upon a time"]
    answers = judge.answers(prompts, replies)
    assert answers == judge_answers_by_hand(lm, judge, prompts, replies)
    assert any(answers)  # the comparison is not between empty strings
    assert_rated_as_answered(judge, prompts, replies, answers)


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


def test_the_default_layers_are_sized_to_the_device_the_pick_alone_on_a_cpu_two_each_side_on_a_gpu():
    """Without --layers the sweep is the detection pick's layer: alone on the CPU (so the defaults
    finish in minutes on two cores), with two neighbours each side on CUDA, clipped to the model."""
    pick = {"layer": 7}
    assert sw.sweep_layers(SweepConfig(), pick, 16, torch.device("cpu")) == [7]
    assert sw.sweep_layers(SweepConfig(), pick, 16, torch.device("cuda", 1)) == [5, 6, 7, 8, 9]
    assert sw.sweep_layers(SweepConfig(), pick, 16, "mps") == [5, 6, 7, 8, 9]
    assert sw.sweep_layers(SweepConfig(), {"layer": 15}, 16, "cuda") == [13, 14, 15]
    assert sw.sweep_layers(SweepConfig(layers="2,4"), pick, 16, "cpu") == [2, 4]  # --layers overrides either
