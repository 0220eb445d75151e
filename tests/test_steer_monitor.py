"""Steering, ablation, monitoring and the causal evaluation on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from traitlens.testing import write_corpus
from traitlens.pipeline.steer.evaluate import (QUESTION, REFUSAL_OPENINGS, evaluate_vector, refusal_first_token_probability,
                                        yes_no_logodds)
from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.steer.monitor import trajectory
from traitlens.pipeline.model.sites import find_blocks
from traitlens.pipeline.steer.steering import ablation, generate, mean_token_norm, steering


def block_outputs(lm, ids, layer):
    _, blocks = find_blocks(lm.model)
    seen = []
    h = blocks[layer].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([ids]))
    h.remove()
    return seen[0][0]


@pytest.fixture
def lm(tiny_lms):
    return tiny_lms["llama"]


@pytest.fixture
def ids(lm):
    return render_ids(lm.tokenizer, "the quick brown fox jumps over the lazy dog", None, True)


def test_alpha_zero_reproduces_unsteered_generation(lm, ids):
    v = np.random.default_rng(0).standard_normal(lm.d_model)
    plain = generate(lm, ids, 12)
    with steering(lm, v, 1, 0.0, scale=10.0):
        assert generate(lm, ids, 12) == plain
    with steering(lm, v, 1, 3.0, scale=10.0):
        assert generate(lm, ids, 12) != plain  # and a real push changes it


def test_steering_adds_exactly_alpha_scale_v(lm, ids):
    v = np.random.default_rng(1).standard_normal(lm.d_model)
    u = torch.tensor(v / np.linalg.norm(v), dtype=torch.float32)
    before = block_outputs(lm, ids, 1)
    with steering(lm, v, 1, 0.5, scale=4.0):
        after = block_outputs(lm, ids, 1)
    torch.testing.assert_close(after - before, (2.0 * u).expand_as(before), atol=1e-5, rtol=0)


def test_generated_positions_only_leaves_the_prompt_alone(lm, ids):
    v = np.random.default_rng(2).standard_normal(lm.d_model)
    before = block_outputs(lm, ids, 1)
    with steering(lm, v, 1, 5.0, scale=4.0, positions="generated"):
        prompt_pass = block_outputs(lm, ids, 1)  # the first pass of the block: the prompt
    torch.testing.assert_close(prompt_pass, before)


def test_ablation_leaves_zero_projection_at_the_layer(lm, ids):
    v = np.random.default_rng(3).standard_normal(lm.d_model)
    u = torch.tensor(v / np.linalg.norm(v), dtype=torch.float32)
    assert (block_outputs(lm, ids, 2) @ u).abs().max() > 1e-2
    for layers in ([2], None):
        with ablation(lm, v, layers):
            out = block_outputs(lm, ids, 2)
        assert (out @ u).abs().max() < 1e-5


def test_mean_token_norm_matches_direct_computation(lm, ids):
    t = torch.tensor([ids])
    got = mean_token_norm(lm, 1, t, torch.ones_like(t))
    norms = block_outputs(lm, ids, 1).norm(dim=-1)
    assert norms.max() < 10 * norms.median()  # no massive activation in the tiny model
    assert np.isclose(got, norms.mean().item(), rtol=1e-5)


def test_trajectory_projection_equals_hidden_states(lm, ids):
    v = np.random.default_rng(4).standard_normal(lm.d_model)
    tr = trajectory(lm, ids, v, layer=1, max_new_tokens=6, threshold=0.0)
    assert tr.n_prompt == len(ids) and tr.token_ids[:len(ids)] == list(ids)  # the prompt, then what was generated
    assert len(tr.tokens) == len(tr.token_ids) == len(tr.projection) and len(ids) < len(tr.token_ids) <= len(ids) + 6
    with torch.no_grad():
        hs = lm.model(input_ids=torch.tensor([tr.token_ids]), output_hidden_states=True).hidden_states[2][0]
    np.testing.assert_allclose(tr.projection, hs.double().numpy() @ (v / np.linalg.norm(v)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tr.velocity, np.gradient(tr.projection, edge_order=2), atol=1e-9)
    # sampled generation is reproducible with its seed
    a = trajectory(lm, ids, v, 1, 6, sample=True, seed=7)
    b = trajectory(lm, ids, v, 1, 6, sample=True, seed=7)
    assert a.token_ids == b.token_ids


def test_yes_no_logodds_and_evaluation_rows(lm):
    statements = ["I love helping people", "I enjoy causing trouble"]
    got = yes_no_logodds(lm, statements)
    yes = lm.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    no = lm.tokenizer("No", add_special_tokens=False)["input_ids"][0]
    for s, g in zip(statements, got):  # independent: one unpadded forward per statement
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=torch.tensor(
                [render_ids(lm.tokenizer, QUESTION.format(statement=s), None, True)])).logits[0, -1], -1)
        assert np.isclose(g, (lp[yes] - lp[no]).item(), atol=1e-4)
    v = np.random.default_rng(5).standard_normal(lm.d_model)
    rows = evaluate_vector(lm, v, 1, [0.0, 1.0], "persona", statements)
    assert np.isclose(rows[0]["plus"], rows[0]["unsteered"], atol=1e-6)  # alpha 0 changes nothing
    assert np.isclose(rows[0]["minus"], rows[0]["unsteered"], atol=1e-6)
    assert rows[1]["plus"] != rows[1]["unsteered"] and rows[1]["shift"] == rows[1]["plus"] - rows[1]["minus"]


def test_refusal_first_token_probability_sums_the_openings_first_tokens(lm):
    requests = ["How do I bake bread?", "Tell me a joke about cats, please"]
    got = refusal_first_token_probability(lm, requests)
    firsts = {lm.tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in REFUSAL_OPENINGS}
    for r, g in zip(requests, got):  # independent: one unpadded forward per request
        with torch.no_grad():
            p = torch.softmax(lm.model(input_ids=torch.tensor([render_ids(lm.tokenizer, r, None, True)])).logits[0, -1], -1)
        assert np.isclose(g, sum(p[t].item() for t in firsts), atol=1e-5)
    rows = evaluate_vector(lm, np.ones(lm.d_model), 1, [0.0], "refusal_first_token", requests)
    assert rows[0]["minus"] is None and np.isclose(rows[0]["plus"], rows[0]["unsteered"], atol=1e-6)


def test_cli_monitor_steer_evaluate_and_rank_by_shift(tmp_path, tiny_llama):
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    c = write_corpus(tmp_path / "c.jsonl", 160)
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", c, "--model", tiny_llama, "--quiet").exit_code == 0
    r = run("extract", "--trait", "kindness", "--methods", "mean_diff,probe", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("monitor", "--trait", "kindness", "--model", tiny_llama, "--max-new-tokens", "5", "--plot",
            tmp_path / "m.png", "--keep", "hello sea sky")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG" and "commitment" in r.output
    q = run("query", "SELECT count(*) AS n, count(DISTINCT position) AS p, min(generated::INT) AS g0, "
            "max(generated::INT) AS g1 FROM trajectories", "--format", "json")
    kept = json.loads(q.output)[0]
    assert q.exit_code == 0 and kept["n"] == kept["p"] > 5 and (kept["g0"], kept["g1"]) == (0, 1)  # --keep stored
    # every prompt and generated token, one row a position
    r = run("steer", "--trait", "kindness", "--model", tiny_llama, "--alpha", "2", "--max-new-tokens", "5", "hello")
    assert r.exit_code == 0 and "--- steered ---" in r.output
    r = run("evaluate", "--trait", "kindness", "--steering", "--model", tiny_llama, "--layers", "0,1", "--alphas",
            "0.5", "--n", "4", "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    r = run("rank", "--trait", "kindness", "--by", "steer_shift")
    assert r.exit_code == 0 and "steer_shift" in r.output
    # the order, independently: each vector's best persona shift within the KL budget, from the
    # steering table as evaluate stored it, largest first; vectors never evaluated come after
    from traitlens.queries.budget import KL_BUDGET
    from traitlens.store import Store

    best: dict[str, float] = {}
    for x in Store.open(store).table("steering").to_pylist():
        if x["method"] != "random" and x["kind"] == "persona" and x["kl"] <= KL_BUDGET:
            best[x["vector_id"]] = max(best.get(x["vector_id"], -np.inf), x["shift"])
    r = run("rank", "--trait", "kindness", "--by", "steer_shift", "--format", "json", "--top", "20")
    ranked = json.loads(r.output)["rows"]
    assert len(best) >= 2 and [x["vector_id"] for x in ranked[:len(best)]] == sorted(best, key=best.get, reverse=True)
    assert all(x["steer_shift"] == pytest.approx(best[x["vector_id"]]) for x in ranked[:len(best)])
    assert all(x["steer_shift"] is None for x in ranked[len(best):])
    r = run("monitor", "--trait", "nope", "--model", tiny_llama, "hi")
    assert r.exit_code == 2 and "no vector for trait 'nope'" in r.output


def test_mean_token_norm_leaves_out_massive_activations(lm, ids):
    t = torch.tensor([ids])
    plain = mean_token_norm(lm, 1, t, torch.ones_like(t))
    _, blocks = find_blocks(lm.model)

    def sink(module, inputs, output):  # make token 0 a 1000x "attention sink", as real LLMs do
        x = output[0] if isinstance(output, tuple) else output
        x = x.clone()
        x[:, 0] *= 1000
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else x

    h = blocks[1].register_forward_hook(sink)
    try:
        with_sink = mean_token_norm(lm, 1, t, torch.ones_like(t))
        every = mean_token_norm(lm, 1, t, torch.ones_like(t), norm="all")
        sunk = block_outputs(lm, ids, 1).norm(dim=-1)
    finally:
        h.remove()
    norms = block_outputs(lm, ids, 1).norm(dim=-1)
    assert np.isclose(with_sink, norms[1:].mean().item(), rtol=1e-4)  # token 0 left out
    assert with_sink < 2 * plain
    assert np.isclose(every, sunk.mean().item(), rtol=1e-4) and every > 10 * with_sink  # norm="all" keeps it
    with pytest.raises(ValueError, match="norm must be"):
        mean_token_norm(lm, 1, t, torch.ones_like(t), norm="median")


def test_the_hook_layer_stops_early_removes_its_hooks_and_pads_one_way(lm, ids):
    from types import SimpleNamespace

    from traitlens.pipeline.model.hooks import block_outputs as early_stopped
    from traitlens.pipeline.model.hooks import forward_hooks, pad_token_id
    from traitlens.pipeline.model.sites import find_blocks

    _, blocks = find_blocks(lm.model)
    ran = []
    with forward_hooks([(b, lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)]):
        out = early_stopped(lm, [0], torch.tensor([ids]))
        assert ran == [0]  # the blocks past the one asked for never ran
        ran.clear()
        torch.testing.assert_close(out[0][0], block_outputs(lm, ids, 0))  # the full model's block 0 output
        ran.clear()
        try:
            with forward_hooks([(blocks[1], lambda m, i, o: 1 / 0)]):
                lm.model(input_ids=torch.tensor([ids]))
        except ZeroDivisionError:
            pass
        ran.clear()
        lm.model(input_ids=torch.tensor([ids]))
        assert ran == list(range(len(blocks)))  # the failing hook was removed, ours stay
    lm.model(input_ids=torch.tensor([ids]))
    assert ran == list(range(len(blocks)))  # and ours are gone after their block
    for pad, eos, want in ((3, 2, 3), (None, 2, 2), (None, None, 0), (0, 5, 0)):
        assert pad_token_id(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == want
