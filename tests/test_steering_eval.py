"""Steering evaluation: damage (KL) on neutral prompts, per-sample statistics, the Pareto front.

Independent computations: a numpy KL of the two models' softmaxes, scipy's bootstrap, the
Wilson interval written out from its formula, a brute-force Pareto front."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from traitlens.pipeline.steer import evaluate as ev
from traitlens.pipeline.steer.damage import next_token_kl
from traitlens.pipeline.steer.stats import bootstrap_ci, pareto_front, slopes, wilson
from traitlens.pipeline.steer.steering import steering

STATEMENTS = ["I love helping people", "I enjoy causing trouble", "the sky and the stars", "step by step",
              "I am always kind to others", "I do not care about anyone"]
NEUTRAL = ["How do I bake bread?", "Write a poem about the sea.", "Tell me about the fox."]


@pytest.fixture(scope="module")
def lm(tiny_lms):
    return tiny_lms["llama"]


def test_alpha_zero_moves_nothing_and_costs_nothing_exactly(lm):
    v = np.random.default_rng(1).standard_normal(lm.d_model)
    rows = ev.evaluate_vector(lm, v, 1, [0.0, 2.0], "persona", STATEMENTS, neutral=NEUTRAL)
    zero = rows[0]
    assert zero["kl"] == 0.0 and zero["shift"] == 0.0 and zero["steerability"] == 0.0
    assert all(s["shift"] == 0.0 for s in zero["samples"])  # every sample, every neutral prompt: exactly
    assert rows[1]["kl"] > 0 and rows[1]["shift"] != 0.0
    # the effect per statement; KL, reply perplexity and distinct-2 per neutral prompt
    assert len(zero["samples"]) == len(STATEMENTS) + 3 * len(NEUTRAL)
    assert zero["perplexity"] == zero["perplexity_unsteered"] and zero["distinct2"] == zero["distinct2_unsteered"]


def test_kl_grows_with_the_push_and_equals_an_independent_computation(lm):
    from traitlens.pipeline.model.encode import render_ids

    v = np.random.default_rng(2).standard_normal(lm.d_model)
    alphas = [0.25, 0.5, 1.0, 2.0, 4.0]
    kl = next_token_kl(lm, v, 1, alphas, 10.0, NEUTRAL)
    means = [kl[a].mean() for a in alphas]
    assert all(b > a for a, b in zip(means, means[1:]))  # strictly more damage for a stronger push
    # independent: one unpadded prompt at a time, KL written out with numpy
    for i, p in enumerate(NEUTRAL):
        ids = torch.tensor([render_ids(lm.tokenizer, p, None, True)])
        with torch.no_grad():
            base = torch.softmax(lm.model(input_ids=ids).logits[0].double(), -1).numpy()
            with steering(lm, v, 1, 2.0, 10.0):
                steered = torch.softmax(lm.model(input_ids=ids).logits[0].double(), -1).numpy()
        want = float(np.mean(np.sum(base * (np.log(base) - np.log(steered)), axis=-1)))
        assert kl[2.0][i] == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_the_interval_agrees_with_scipys_bootstrap():
    from scipy.stats import bootstrap

    x = np.random.default_rng(3).standard_normal(300) * 2 + 0.5
    lo, hi = bootstrap_ci(x, n_boot=5000, seed=1)
    ref = bootstrap((x,), np.mean, n_resamples=5000, method="percentile", random_state=7).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)
    se = x.std(ddof=1) / math.sqrt(len(x))  # and the normal approximation
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.04) and hi == pytest.approx(x.mean() + 1.96 * se, abs=0.04)
    assert bootstrap_ci(x, seed=4) == bootstrap_ci(x, seed=4)  # seeded: a rerun reports the same interval


def test_wrong_way_share_and_its_interval_on_a_known_case(lm, monkeypatch):
    """A synthetic measure: 10 samples, 3 of which the push moves the wrong way."""
    plus = np.array([1, 2, 3, 1, 2, 3, 1, -1, -2, -0.5])
    calls = []

    def fake(lm_, texts):
        calls.append(1)
        return {1: np.zeros(10), 2: plus, 3: np.zeros(10)}[len(calls)]  # unsteered, +v, -v

    monkeypatch.setitem(ev.MEASURES, "persona", fake)
    (row,) = ev.evaluate_vector(lm, np.ones(lm.d_model), 1, [1.0], "persona", [f"s{i}" for i in range(10)],
                                neutral=NEUTRAL)
    assert row["wrong_way"] == 0.3 and row["shift"] == pytest.approx(plus.mean())
    z, n, p = 1.959964, 10, 0.3  # Wilson, from its formula
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (row["wrong_way_low"], row["wrong_way_high"]) == pytest.approx((centre - half, centre + half))
    # steerability: each sample's slope through (-1, 0), (0, 0), (+1, plus) is plus / 2
    assert row["steerability"] == pytest.approx(np.mean(plus / 2))
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_slopes_and_the_pareto_front_against_brute_force():
    rng = np.random.default_rng(5)
    a = np.array([-1.0, 0.0, 0.5, 2.0])
    y = rng.standard_normal((7, 4))
    for i in range(7):
        assert slopes(a, y)[i] == pytest.approx(np.polyfit(a, y[i], 1)[0])
    e, d = rng.standard_normal(40), rng.random(40)
    front = set(pareto_front(e, d))
    brute = {i for i in range(40) if not any((e[j] >= e[i] and d[j] <= d[i]) and (e[j] > e[i] or d[j] < d[i])
                                             for j in range(40))}
    assert front == brute


def test_cli_evaluate_measures_the_random_floor_prints_the_front_and_stores_every_sample(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS

    store = tmp_path / "s"
    c = write_corpus(tmp_path / "c.jsonl", 120)
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", c, "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff,random", "--quiet").exit_code == 0
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--layers", "0-2",
            "--alphas", "0.5,2", "--n", "4", "--kl-budget", "1000", "--reply-tokens", "3", "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    assert "Pareto front (shift up, KL down): mean_diff L" in r.output
    assert "steering pick (persona, largest shift within KL 1000): mean_diff L" in r.output
    assert "random at the same setting" in r.output and "detection pick: mean_diff L" in r.output
    assert "against steering (best shift within KL 1000) across 3 (method, layer) cells: Spearman" in r.output
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    s = Store.open(store)
    rows = s.table("steering").to_pylist()
    own = [x for x in rows if x["method"] == "mean_diff"]
    floor = [x for x in rows if x["method"] == "random"]
    assert len(own) == 3 * 2 and {x["method"] for x in rows} == {"mean_diff", "random"}
    # the floor is measured where it decides something: at every setting of the front and at the pick
    from traitlens.pipeline.steer.rule import front, pick

    wanted = {(x["layer"], x["alpha"]) for x in front(own) + [pick(own, 1000)]}
    assert {(x["layer"], x["alpha"]) for x in floor} == wanted
    assert all(x["ci_low"] <= x["shift"] <= x["ci_high"] and x["kl"] > 0 for x in rows)
    assert all(x["perplexity"] > 1 and 0 < x["distinct2"] <= 1 for x in rows)
    samples = s.table("steering_samples").to_pylist()
    assert len(samples) == len(rows) * (4 + 3 * len(NEUTRAL_PROMPTS))
    for x in rows:  # each stored mean is its samples' mean (the perplexity column is their median)
        def mine(measure, key="vector_id"):
            return [y["shift"] if measure in ("effect", "kl") else y["plus"] for y in samples
                    if (y[key], y["layer"], y["alpha"], y["measure"]) == (x[key], x["layer"], x["alpha"], measure)]
        assert len(mine("effect")) == 4 and np.mean(mine("effect")) == pytest.approx(x["shift"])
        assert np.mean(mine("kl")) == pytest.approx(x["kl"])
        assert np.median(mine("perplexity")) == pytest.approx(x["perplexity"])
        assert np.mean(mine("distinct2")) == pytest.approx(x["distinct2"])
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--layers", "1",
            "--alphas", "2", "--n", "4", "--kl-budget", "0", "--reply-tokens", "0", "--plot", tmp_path / "e.png")
    assert r.exit_code == 0 and "pick: none: every setting costs more than the KL budget of 0 nats" in r.output
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--kind", "expression",
            "--layers", "1", "--alphas", "1", "--n", "8", "--max-new-tokens", "4", "--no-random", "--plot",
            tmp_path / "x.png")
    assert r.exit_code == 0, r.output
    assert f"expression: replies of 4 tokens to {len(NEUTRAL_PROMPTS)} neutral prompts, read on" in r.output
    rows = [x for x in Store.open(store).table("steering").to_pylist() if x["kind"] == "expression"]
    assert len(rows) == 1 and rows[0]["minus"] is not None and rows[0]["n"] == len(NEUTRAL_PROMPTS)


def test_expression_reads_replies_unsteered_and_calibrates_the_held_out_means_to_0_and_1(lm):
    from traitlens.pipeline.model.hooks import block_outputs
    from traitlens.pipeline.steer.expression import CALIBRATION_QUESTION, Expression, _reply_ids, read_replies

    u = np.random.default_rng(6).standard_normal(lm.d_model)
    u /= np.linalg.norm(u)
    pos, neg = STATEMENTS[::2], STATEMENTS[1::2]
    e = Expression(u, 1, max_new_tokens=5).calibrate(lm, pos, neg)
    assert np.mean(e.read(lm, [CALIBRATION_QUESTION] * 3, pos)) == pytest.approx(1.0)
    assert np.mean(e.read(lm, [CALIBRATION_QUESTION] * 3, neg)) == pytest.approx(0.0, abs=1e-9)
    # the reading, independently: each conversation alone, unpadded, its reply tokens' mean projection
    convs = [_reply_ids(lm, p, r, True) for p, r in zip(NEUTRAL, ["I love the sea", "no", "the quick brown fox"])]
    got = read_replies(lm, u, 1, convs, batch_size=2)
    for (ids, start), g in zip(convs, got):
        h = block_outputs(lm, [1], torch.tensor([ids]))[1][0].float().numpy()
        assert g == pytest.approx(float((h[start:] @ u).mean()), rel=1e-4, abs=1e-6)
    # steering changes the replies, reading them stays unsteered: alpha 0 moves nothing, exactly
    rows = ev.evaluate_vector(lm, u, 1, [0.0, 4.0], "expression", NEUTRAL, neutral=NEUTRAL, expression=e)
    assert rows[0]["shift"] == 0.0 and rows[0]["kl"] == 0.0 and rows[0]["minus"] is not None
    assert rows[1]["plus"] != rows[1]["unsteered"]
    with pytest.raises(ValueError, match="expression="):
        ev.evaluate_vector(lm, u, 1, [1.0], "expression", NEUTRAL)


def test_cli_evaluate_at_default_layers_prints_the_plan_it_measured_and_the_settings_early_stop_skipped(
        tmp_path, tiny_llama):
    """`evaluate --steering` without --layers sweeps the detection pick's layer alone (the CPU
    default) and says so; its "ran:"/"measured"/"widen:" lines match the rows it stored,
    and each setting it says it skipped is absent from them and comes after a stored row of the
    same cell whose KL interval lies above the budget."""
    import re

    from click.testing import CliRunner

    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import best_vector
    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    c = write_corpus(tmp_path / "c.jsonl", 120)
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", c, "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff,random", "--quiet").exit_code == 0
    budget = 1e-9  # every push costs more: the first alpha of each layer stops the rest
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--alphas", "0.5,2,8",
            "--n", "4", "--kl-budget", budget, "--reply-tokens", "2", "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    s = Store.open(store)
    with StoreSQL(s) as q:
        pick_layer = best_vector(q, "kindness")["layer"]
    rows = s.table("steering").to_pylist()
    own = [x for x in rows if x["method"] == "mean_diff"]
    floor = [x for x in rows if x["method"] == "random"]
    layers = [pick_layer]  # on a CPU the default is the detection pick's layer alone
    assert sorted({x["layer"] for x in own}) == layers
    ran = next(line for line in r.output.splitlines() if line.startswith("ran: "))
    assert (f"methods mean_diff; layers {pick_layer} (the detection pick's: the default on cpu; 2 each side on a GPU)"
            in ran)
    assert "alphas 0.5,2,8" in ran and "on 4 held-out prompts" in ran and "2-token replies to 32 neutral" in ran
    assert "device cpu" in ran
    measured = next(line for line in r.output.splitlines() if line.startswith("measured "))
    assert measured.startswith(f"measured {len(own)} settings (grid) and {len(floor)} of the random floor")
    said = {(m, int(l), float(a)) for m, l, a in re.findall(r"(\w+) L(\d+) a([\d.]+) \(after", measured)}
    stored = {(x["method"], x["layer"], x["alpha"]) for x in own}
    assert said == {("mean_diff", l, a) for l in layers for a in (2.0, 8.0)}  # after alpha 0.5 of each layer
    assert not said & stored and stored == {("mean_diff", l, 0.5) for l in layers}
    assert all(x["kl_low"] > budget for x in own)  # the rows that stopped them: KL interval above the budget
    from traitlens.store.layout import format_layer_list

    gpu_layers = format_layer_list(range(max(0, pick_layer - 2), min(3, pick_layer + 3)))  # (3 blocks: make_model)
    assert (f"widen: --layers {gpu_layers} (or all) --methods all --alphas 0.5,2,8,... --n 8 --no-early-stop"
            in r.output)
    # --no-early-stop measures the whole grid, and says nothing was skipped
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--alphas", "0.5,2",
            "--n", "4", "--kl-budget", budget, "--reply-tokens", "0", "--no-early-stop", "--no-random",
            "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    assert f"measured {2 * len(layers)} settings (grid) and 0 of the random floor\n" in r.output
    assert len([x for x in Store.open(store).table("steering").to_pylist() if x["method"] == "mean_diff"]) == \
        len(own) + 2 * len(layers)
    assert "skipped" not in r.output and "--no-early-stop" not in r.output.split("widen:")[1]


def test_the_kl_base_kept_across_calls_runs_the_unsteered_forward_once_and_changes_no_number(lm):
    from traitlens.pipeline.steer.damage import next_token_kl_under
    from traitlens.pipeline.steer.steering import Push

    v = np.random.default_rng(4).standard_normal(lm.d_model)
    settings = {a: [Push(v, 1, a, 10.0)] for a in (0.5, 2.0)}
    calls = []
    handle = lm.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        fresh = next_token_kl_under(lm, settings, NEUTRAL, batch_size=2)
        n_fresh, base = len(calls), {}
        kept = {}
        for a in settings:  # one setting a call, as early stop runs them
            kept.update(next_token_kl_under(lm, {a: settings[a]}, NEUTRAL, batch_size=2, base=base))
        n_kept = len(calls) - n_fresh
    finally:
        handle.remove()
    batches = math.ceil(len(NEUTRAL) / 2)
    assert n_fresh == batches * 3 and n_kept == batches * (1 + 2)  # the unsteered pass once per batch, not per call
    for a in settings:
        np.testing.assert_allclose(kept[a], fresh[a], rtol=1e-6, atol=1e-9)


def test_the_steered_replies_in_one_batch_of_32_equal_each_prompt_replied_to_alone(lm):
    """The evaluator replies to the neutral prompts 32 at a time (REPLY_BATCH: fewer, larger
    decode steps); the replies and their perplexity must be those of each prompt alone,
    unpadded, under the same push."""
    from traitlens.pipeline.model.generation import greedy_replies
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS, reply_perplexity
    from traitlens.pipeline.steer.settings import REPLY_BATCH
    from traitlens.pipeline.steer.steering import pushes

    assert REPLY_BATCH >= len(NEUTRAL_PROMPTS)  # the project's prompts: one batch
    v = np.random.default_rng(5).standard_normal(lm.d_model)
    e = ev.Evaluator(lm, "persona", STATEMENTS, reply_tokens=6)
    calls = []
    handle = lm.model.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    try:
        (row,) = e.at(v, 1, [2.0])
    finally:
        handle.remove()
    decode_steps = [b for b, t in calls if t == 1]  # (a KV-cached step feeds one new token a row)
    assert decode_steps and set(decode_steps) <= {len(NEUTRAL_PROMPTS)}  # the 32 prompts' replies: one batch
    assert len(NEUTRAL_PROMPTS) in {b for b, t in calls if t > 1 + 6}  # and their perplexity (prompt + reply)
    push = e.push(v, 1, 2.0)
    with pushes(lm, [push]):
        alone = greedy_replies(lm, list(NEUTRAL_PROMPTS), 6, batch_size=1)
    texts = [s["reply"] for s in row["samples"] if s["measure"] == "perplexity"]
    assert texts == [lm.tokenizer.decode(r, skip_special_tokens=True) for r in alone]
    ppl = reply_perplexity(lm, list(NEUTRAL_PROMPTS), alone, batch_size=1)
    got = [s["plus"] for s in row["samples"] if s["measure"] == "perplexity"]
    np.testing.assert_allclose(np.array(got, dtype=float), ppl, rtol=1e-4)
