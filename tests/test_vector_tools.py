"""Vector arithmetic with provenance, and the logit lens, against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from traitlens.pipeline.extract.combine import parse_formula
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.extract.methods import ExtractionError
from traitlens.testing import KEY, synthetic_store
from traitlens.workflows.cli import cli


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture()
def store(tmp_path):
    s, _ = synthetic_store(tmp_path / "s", n=200, d=8, layers=(0, 1), sep=3.0)
    extract(s.root, "planted", ["mean_diff", "probe", "random"], cfg=ExtractConfig(n_boot=0))
    return s


def run(store, *args):
    return CliRunner().invoke(cli, ["--store", str(store.root), *map(str, args)])


def test_formulas_parse_with_hyphenated_trait_names():
    assert parse_formula("a - 0.5*b + 2 * c") == [(1.0, "a"), (-0.5, "b"), (2.0, "c")]
    assert parse_formula("-desire-for-acquiring-power + 1e-1*x") == [(-1.0, "desire-for-acquiring-power"), (0.1, "x")]
    with pytest.raises(ExtractionError, match="separated by ' \\+ ' or ' - ' with spaces"):
        parse_formula("a -b")
    with pytest.raises(ExtractionError, match="empty"):
        parse_formula("  ")


def test_a_combined_vector_equals_its_formula_records_its_parents_and_is_ranked_like_any_other(store, tmp_path):
    vecs = {r["method"]: r for r in store.table("vectors").to_pylist() if r["layer"] == 1}
    a, b = vecs["mean_diff"], vecs["probe"]
    r = run(store, "vectors", "combine", f"{a['vector_id']} - 0.5*{b['vector_id']}", "--layer", 1, "--name", "mix")
    assert r.exit_code == 0, r.output
    rec = next(v for v in store.table("vectors").to_pylist() if v["method"] == "mix")
    want = unit(unit(a["vector"]) - 0.5 * unit(b["vector"]))
    assert np.allclose(rec["vector"], want, atol=1e-6)
    params = json.loads(rec["params"])
    assert params["parents"] == [a["vector_id"], b["vector_id"]] and params["coefficients"] == [1.0, -0.5]
    assert rec["trait"] == "planted" and rec["layer"] == 1 and rec["model_key"] == KEY.model_key
    # its held-out AUROC, independently: project the held-out rows read straight from the store
    prompts = {p["prompt_id"]: p for p in store.prompts().to_pylist()}
    rows = store.group_rows(KEY).to_pylist()
    held = [(x["row"], prompts[x["prompt_id"]]["label"]) for x in rows if prompts[x["prompt_id"]]["split"] == rec["held_split"]]
    X = np.asarray(store.layer_array(KEY, 1, len(rows))[:])[[h[0] for h in held]]
    assert rec["auroc"] == pytest.approx(roc_auc_score([h[1] == 1 for h in held], X @ want), abs=1e-6)
    r = run(store, "rank", "--trait", "planted", "--top", 10)
    assert r.exit_code == 0 and " mix " in r.output
    out = tmp_path / "mix.safetensors"
    assert run(store, "export", "--trait", "planted", "--method", "mix", "-o", out).exit_code == 0 and out.exists()
    # orthogonalised against its second parent: nothing left along it
    r = run(store, "vectors", "combine", a["vector_id"], "--layer", 1, "--name", "ortho", "--orthogonal-to", b["vector_id"])
    assert r.exit_code == 0, r.output
    o = next(v for v in store.table("vectors").to_pylist() if v["method"] == "ortho")
    ua, ub = unit(a["vector"]), unit(b["vector"])
    assert abs(np.dot(o["vector"], ub)) < 1e-6 and np.allclose(o["vector"], unit(ua - (ua @ ub) * ub), atol=1e-6)
    assert json.loads(o["params"])["orthogonal_to"] == [b["vector_id"]]


def test_combine_refuses_what_it_cannot_make(store):
    vecs = {(r["method"], r["layer"]): r["vector_id"] for r in store.table("vectors").to_pylist()}
    r = run(store, "vectors", "combine", f"{vecs[('mean_diff', 0)]} + {vecs[('probe', 1)]}", "--layer", 1, "--name", "x")
    assert r.exit_code == 2 and "different groups or layers" in r.output
    r = run(store, "vectors", "combine", "nope", "--layer", 1, "--name", "x")
    assert r.exit_code == 2 and "'nope' is neither a vector id nor a trait" in r.output
    r = run(store, "vectors", "combine", vecs[("probe", 1)], "--layer", 1, "--name", "probe")
    assert r.exit_code == 2 and "give a new method name" in r.output
    r = run(store, "vectors", "combine", f"{vecs[('probe', 1)]} - {vecs[('probe', 1)]}", "--layer", 1, "--name", "z")
    assert r.exit_code == 2 and "zero vector" in r.output


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_logit_lens_is_the_unembedding_of_the_normed_vector(tiny_lms, arch):
    from traitlens.pipeline.steer.lens import final_norm, lens_logits, logit_lens

    lm = tiny_lms[arch]
    v = np.random.default_rng(0).standard_normal(lm.d_model)
    u = torch.tensor(unit(v), dtype=torch.float32)
    norm = final_norm(lm)
    if arch == "llama":  # RMSNorm, by hand
        eps = norm.variance_epsilon
        normed = u / torch.sqrt((u ** 2).mean() + eps) * norm.weight
    else:  # LayerNorm, by hand
        normed = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + norm.eps) * norm.weight + norm.bias
    W = lm.model.get_output_embeddings().weight.detach()
    want = (W @ normed.detach()).double().numpy()
    got = lens_logits(lm, v * 7.0)  # the vector's length does not matter: it is read as a unit vector
    assert np.allclose(got, want, atol=1e-5)
    read = logit_lens(lm, v, top=5)
    assert [t[0] for t in read["promotes"]] == list(np.argsort(want)[::-1][:5])
    assert [t[0] for t in read["suppresses"]] == list(np.argsort(want)[:5])


def test_cli_vectors_lens_stores_the_reading_and_vectors_and_rank_show_it(tmp_path, tiny_llama):
    from traitlens.testing import write_corpus

    store = tmp_path / "s"
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert go("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--model", tiny_llama, "--quiet").exit_code == 0
    assert go("extract", "--trait", "kindness", "--methods", "mean_diff,probe", "--quiet").exit_code == 0
    r = go("vectors", "lens", "--trait", "kindness", "--model", tiny_llama, "--top", "4", "--layers", "1")
    assert r.exit_code == 0, r.output
    assert r.output.count("promotes") == 2 and "stored 16 rows in the lens table" in r.output
    r = go("vectors", "--trait", "kindness")
    assert r.exit_code == 0 and "promotes | suppresses" in r.output
    assert sum(" | " in line for line in r.output.splitlines()[1:]) == 2  # the two layer-1 vectors
    assert go("vectors", "lens", "--trait", "kindness", "--model", tiny_llama, "--top", "3").exit_code == 0
    r = go("rank", "--trait", "kindness", "--by", "auroc")
    assert r.exit_code == 0 and "logit lens of the first row (promotes | suppresses): '" in r.output
    from traitlens.store import Store

    lens = Store.open(store).table("lens").to_pylist()
    assert {x["direction"] for x in lens} == {"promotes", "suppresses"} and all(x["model_key"] for x in lens)
