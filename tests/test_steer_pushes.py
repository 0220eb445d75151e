"""Pushes as the steering libraries have them: several at once, at sub-module sites, at chosen
positions, batched; each checked against a hand-written hook or a one-at-a-time run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.model.hooks import forward_hooks, hidden, pad_batch, pad_token_id, position_ids_from_mask
from traitlens.pipeline.steer.steering import Push, generate_batch, position_mask, pushes, site_module


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tiny_lms):
    return tiny_lms[request.param]


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return torch.tensor(v / np.linalg.norm(v))


def enc(lm, text):
    """Token ids of ``text``, in the chat template where the tokenizer has one."""
    return render_ids(lm.tokenizer, text, None, lm.tokenizer.chat_template is not None)


def ids_of(lm, text):
    return torch.tensor([enc(lm, text)])


def logits(lm, ids, **kw):
    with torch.no_grad():
        return lm.model(input_ids=ids, **kw).logits.float()


def manual(lm, module, add):
    """A hand-written hook adding ``add`` ([d] or [T, d]) to ``module``'s output."""
    def hook(mod, inputs, output):
        x = hidden(output)
        new = x + add.to(x.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
    return forward_hooks([(module, hook)])


def test_two_pushes_at_once_equal_the_sum_of_their_pushes(lm):
    rng = np.random.default_rng(0)
    v1, v2 = rng.standard_normal(lm.d_model), rng.standard_normal(lm.d_model)
    ids = ids_of(lm, "Tell me about the sea")
    both = [Push(v1, 1, 0.7, 3.0), Push(v2, 1, -0.4, 5.0)]
    with pushes(lm, both):
        got = logits(lm, ids)
    with manual(lm, site_module(lm, "resid", 1), 0.7 * 3.0 * unit(v1) - 0.4 * 5.0 * unit(v2)):
        want = logits(lm, ids)
    assert torch.allclose(got, want, atol=1e-5)
    # at two different layers: the same as two hand-written hooks
    with pushes(lm, [Push(v1, 0, 0.7, 3.0), Push(v2, 2, -0.4, 5.0)]):
        got = logits(lm, ids)
    with manual(lm, site_module(lm, "resid", 0), 2.1 * unit(v1)), manual(lm, site_module(lm, "resid", 2), -2.0 * unit(v2)):
        want = logits(lm, ids)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, logits(lm, ids), atol=1e-3)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out"])
def test_sub_module_sites_steer_exactly_that_modules_output(lm, site):
    v = np.random.default_rng(1).standard_normal(lm.d_model)
    ids = ids_of(lm, "step by step")
    names = ("self_attn", "attn") if site == "attn_out" else ("mlp",)
    block = site_module(lm, "resid", 1)
    module = next(getattr(block, n) for n in names if hasattr(block, n))
    assert site_module(lm, site, 1) is module
    with pushes(lm, [Push(v, 1, 1.5, 2.0, site=site)]):
        got = logits(lm, ids)
    with manual(lm, module, 3.0 * unit(v)):
        want = logits(lm, ids)
    assert torch.allclose(got, want, atol=1e-5)
    with pushes(lm, [Push(v, 1, 1.5, 2.0, site="resid")]):
        resid = logits(lm, ids)
    # the MLP is the block's last sub-module: a push on its output is a push on the block's output;
    # the attention's output goes on through the MLP, so that push differs
    assert torch.allclose(got, resid, atol=1e-5) == (site == "mlp_out")


def deltas(lm, item, seqs, new_tokens):
    """Per (row, position of its own sequence): was the push's module output changed? Runs a
    left-padded batch through generation twice, recording the module's output per pass."""
    module = site_module(lm, item.site, item.layer)
    seen = []

    def record(mod, inputs, output):
        seen.append(hidden(output).detach().clone())

    runs = []
    for steer in (False, True):
        seen.clear()
        if steer:  # the recorder is registered after the push: it sees the pushed output
            width = max(len(s) for s in seqs)
            pad = torch.tensor([width - len(s) for s in seqs])
            with pushes(lm, [item], pad), forward_hooks([(module, record)]):
                _greedy(lm, seqs, new_tokens)
        else:
            with forward_hooks([(module, record)]):
                _greedy(lm, seqs, new_tokens)
        runs.append(torch.cat(seen, dim=1))  # [B, width + new_tokens - 1, d]
    moved = (runs[1] - runs[0]).abs().amax(-1) > 1e-4  # [B, columns]
    width = max(len(s) for s in seqs)
    return [{c - (width - len(s)) for c in range(moved.shape[1]) if moved[i, c]} for i, s in enumerate(seqs)]


def _greedy(lm, seqs, n):
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "left", lm.device)
    with torch.no_grad():  # fixed continuation tokens: both runs see the same sequence
        past, step_ids, step_mask = None, ids, mask.long()
        for _ in range(n):
            o = lm.model(input_ids=step_ids, attention_mask=step_mask, position_ids=position_ids_from_mask(step_mask)
                         [:, -step_ids.shape[1]:], past_key_values=past, use_cache=True)
            past = o.past_key_values
            step_ids = torch.full((len(seqs), 1), 7, dtype=torch.long)  # token 7, whatever the push did
            step_mask = torch.cat([step_mask, torch.ones(len(seqs), 1, dtype=torch.long)], dim=1)


@pytest.mark.parametrize("spec", ["all", "generated", "prompt", "last-prompt", "2:5", ":3", "4:"])
def test_each_position_selector_touches_exactly_its_positions(lm, spec):
    seqs = [enc(lm, "Tell me a story about the sea"),
            enc(lm, "Hi")]
    v = np.random.default_rng(2).standard_normal(lm.d_model)
    n_new = 3
    got = deltas(lm, Push(v, 1, 4.0, 3.0, site="resid", positions=spec), seqs, n_new)
    # the positions each row's passes cover: its prompt, then n_new - 1 fed-back tokens
    for s, touched in zip(seqs, got):
        P, total = len(s), len(s) + n_new - 1
        want = {"all": set(range(total)), "generated": set(range(P, total)), "prompt": set(range(P)),
                "last-prompt": {P - 1}, "2:5": {2, 3, 4}, ":3": {0, 1, 2}, "4:": set(range(4, total))}[spec] & set(range(total))
        # at the pushed module only the pushed positions move (attention spreads a push from the next block on)
        assert touched == want, (spec, P, sorted(touched))


def test_the_mask_counts_each_rows_own_tokens_under_left_padding():
    m = position_mask("last-prompt", 0, 6, torch.tensor([6, 3]), torch.tensor([0, 3]))
    assert m.tolist() == [[False] * 5 + [True], [False] * 5 + [True]]
    m = position_mask("0:2", 0, 6, torch.tensor([6, 3]), torch.tensor([0, 3]))
    assert m.tolist() == [[True, True] + [False] * 4, [False, False, False, True, True, False]]
    m = position_mask("generated", 6, 1, torch.tensor([6, 3]), torch.tensor([0, 3]))
    assert m.tolist() == [[True], [True]]
    with pytest.raises(ValueError, match="use all, generated, prompt, last-prompt or A:B"):
        position_mask("first", 0, 3, torch.tensor([3]), torch.tensor([0]))


def test_batched_steer_equals_one_at_a_time(lm):
    texts = ["Tell me a story about the sea", "Hi", "What is two plus two?"]
    seqs = [enc(lm, t) for t in texts]
    v = np.random.default_rng(3).standard_normal(lm.d_model)
    for item in (Push(v, 1, 2.0, 3.0), Push(v, 1, 2.0, 3.0, positions="generated"),
                 Push(v, 0, 1.0, 3.0, site="mlp_out", positions="last-prompt")):
        batched = generate_batch(lm, seqs, [item], 6)
        alone = [generate_batch(lm, [s], [item], 6)[0] for s in seqs]
        assert batched == alone


def test_cli_steer_applies_several_vectors_and_says_where(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff,probe", "--quiet").exit_code == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello sea\nthe sky and the stars\n")
    r = run("steer", "--model", tiny_llama, "--add", "kindness:1:2", "--add", "kindness:0:-1", "--site", "mlp_out",
            "--positions", "generated", "--file", prompts, "--max-new-tokens", "4")
    assert r.exit_code == 0, r.output
    applied = r.output.splitlines()[0]
    assert applied.startswith("applied ") and "alpha +2 x" in applied and "at mlp_out L1 (generated positions)" in applied
    assert "alpha -1 x" in applied and "at mlp_out L0" in applied
    assert r.output.count("--- steered ---") == 2 and "=== 'the sky and the stars' ===" in r.output
    r = run("steer", "--model", tiny_llama, "--trait", "kindness", "--positions", "first", "hi")
    assert r.exit_code == 2 and "use all, generated, prompt, last-prompt or A:B" in r.output
    r = run("steer", "--model", tiny_llama, "--add", "kindness:x", "hi")
    assert r.exit_code == 2 and "TRAIT_OR_VECTOR_ID[:LAYER[:ALPHA]]" in r.output
    r = run("monitor", "--trait", "kindness", "--model", tiny_llama, "--add", "kindness:1:2", "--file", prompts,
            "--max-new-tokens", "4", "--plot", tmp_path / "m.png")
    assert r.exit_code == 0, r.output
    assert "steering while monitoring: kindness" in r.output and r.output.count("commitment:") == 2
    assert (tmp_path / "m-0.png").exists() and (tmp_path / "m-1.png").exists()


def test_conditional_steering_leaves_a_prompt_below_threshold_unsteered_and_steers_one_above(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.steering import condition_scores
    from traitlens.store import Store
    from traitlens.testing import write_corpus
    from traitlens.workflows.cli import cli

    store = tmp_path / "s"
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert run("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert run("extract", "--trait", "kindness", "--methods", "mean_diff", "--quiet").exit_code == 0
    s = Store.open(store)
    vec = max((v for v in s.table("vectors").to_pylist() if v["pooling"] == "last"), key=lambda v: v["auroc"])
    # the prompt's projection at steer time equals its stored row's projection (the same state, read twice)
    from traitlens.pipeline.extract.audit import vector_group

    key = vector_group(vec)
    rows = s.group_rows(key).to_pylist()[:4]
    texts = {p["prompt_id"]: p["text"] for p in s.prompts().to_pylist()}
    lm = load_model(tiny_llama)
    seqs = [render_ids(lm.tokenizer, texts[r["prompt_id"]], None, True) for r in rows]
    got = condition_scores(lm, vec["vector"], vec["layer"], "last", seqs)
    stored = np.asarray(s.layer_array(key, vec["layer"], max(r["row"] for r in rows) + 1)[:])[[r["row"] for r in rows]]
    assert got == pytest.approx(stored @ np.asarray(vec["vector"]), rel=1e-3, abs=1e-4)
    # a threshold between two prompts' projections: one is steered, the other left token for token
    prompts = [texts[r["prompt_id"]] for r in rows[:2]]
    lo, hi = sorted(got[:2])
    if hi - lo < 1e-3:
        pytest.skip("the two prompts project alike")
    f = tmp_path / "p.txt"
    f.write_text("\n".join(prompts) + "\n")
    r = run("steer", "--model", tiny_llama, "--vector-id", vec["vector_id"], "--alpha", "8", "--file", f,
            "--max-new-tokens", "6", "--condition", vec["vector_id"], "--condition-threshold", (lo + hi) / 2)
    assert r.exit_code == 0, r.output
    blocks = r.output.split("=== ")[1:]
    for text, block in zip(prompts, blocks):
        plain = block.split("--- unsteered ---\n")[1].split("\n\n--- steered")[0]
        steered = block.split(" ---\n")[-1].strip()
        above = got[prompts.index(text)] > (lo + hi) / 2
        assert ("condition not met" in block) == (not above)
        assert (plain.strip() == steered) == (not above), block
    # learned on the held-out split (best F1), stored, and shown
    r = run("steer", "--model", tiny_llama, "--vector-id", vec["vector_id"], "--condition", "kindness", "hi")
    assert r.exit_code == 0 and "best F1" in r.output, r.output
    cond = Store.open(store).table("conditions").to_pylist()
    assert len(cond) == 1 and 0 < cond[0]["f1"] <= 1 and cond[0]["split"] in ("val", "test")


def test_the_best_f1_threshold_is_the_best_cut():
    from sklearn.metrics import f1_score

    from traitlens.pipeline.extract.metrics import best_f1_threshold

    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(3, 40))
        p, pos = rng.standard_normal(n), rng.random(n) < 0.5
        if not pos.any():
            continue
        thr, f1, precision, recall = best_f1_threshold(p, pos)
        cuts = [p.min() - 1] + list((np.sort(p)[1:] + np.sort(p)[:-1]) / 2)
        assert f1 == pytest.approx(max(f1_score(pos, p > c) for c in cuts))
        assert f1 == pytest.approx(f1_score(pos, p > thr)) and recall == pytest.approx(((p > thr) & pos).sum() / pos.sum())


def test_batched_monitoring_equals_one_at_a_time_and_reads_the_steered_states(lm):
    from traitlens.pipeline.steer.monitor import hidden_states, trajectories, trajectory

    seqs = [enc(lm, t) for t in ("Tell me a story about the sea", "Hi", "What is two plus two?")]
    v = np.random.default_rng(5).standard_normal(lm.d_model)
    push = Push(np.random.default_rng(6).standard_normal(lm.d_model), 1, 2.0, 3.0, positions="generated")
    for items in ((), (push,)):
        batched = trajectories(lm, seqs, v, 2, 5, threshold=0.0, items=items, batch_size=2)
        for s, b in zip(seqs, batched):
            one = trajectory(lm, s, v, 2, 5, threshold=0.0, items=items)
            assert b.token_ids == one.token_ids and b.commitment == one.commitment
            assert np.allclose(b.projection, one.projection, atol=1e-4)
    # unsteered, the states read are the model's own (one unpadded forward)
    one = trajectory(lm, seqs[0], v, 2, 5)
    u = unit(v).numpy()
    assert np.allclose(one.projection, hidden_states(lm, one.token_ids, 2) @ u, atol=1e-4)
    # under a push on the generated positions, the reply's states move and the prompt's do not
    pushed = trajectory(lm, seqs[0], v, 2, 5, items=(push,))
    plain = hidden_states(lm, pushed.token_ids, 2) @ u
    P = len(seqs[0])
    assert np.allclose(pushed.projection[:P], plain[:P], atol=1e-4)
    assert not np.allclose(pushed.projection[P:], plain[P:], atol=1e-3)
