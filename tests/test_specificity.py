"""Specificity beyond the corpus: ``extract --background`` (more negatives for the methods that
take them, a specificity figure for every vector, recorded in its provenance), ``rank``'s line
and ``--by spec_*``, and ``score --background``'s percentiles, each checked against a computation
of its own on a store whose trait corpus carries a nuisance direction the background shares."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.pipeline.capture.splits import hash_split
from traitlens.store import GroupKey, PendingBatch, Store
from traitlens.workflows.cli import cli

KEY = GroupKey("synthetic-0000", "raw", "resid", "last")
D = 16


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def nuisance_store(path, n_trait: int = 800, n_background: int = 400, seed: int = 0):
    """Trait rows: positives at +t, negatives at -t along the trait direction, and positives also
    at +z along a nuisance direction (negatives at -z). Background rows sit at +z with no t: a
    vector that reads z ranks them with the positives. Returns (store, trait texts, background
    texts, t, z)."""
    rng = np.random.default_rng(seed)
    t, z = np.eye(D)[0], np.eye(D)[1]
    y = np.where(rng.random(n_trait) < 0.5, 1, -1)
    X_trait = rng.standard_normal((n_trait, D)) + np.outer(y, 2.0 * t) + np.outer(y, 4.0 * z)
    X_bg = rng.standard_normal((n_background, D)) + 4.0 * z
    trait_texts = [f"trait prompt {i}" for i in range(n_trait)]
    bg_texts = [f"ordinary prompt {i}" for i in range(n_background)]
    store = Store.open(path, create=True)
    rows = []
    for texts, labels, trait in ((trait_texts, y, "planted"), (bg_texts, np.zeros(n_background, int), "other")):
        for i, (text, label) in enumerate(zip(texts, labels)):
            pid = prompt_id_for(text, None)
            rows.append({"prompt_id": pid, "text": text, "dataset": trait, "trait": trait, "label": int(label),
                         "split": hash_split(pid), "source": f"{trait}:{i}"})
    store.add_prompts(rows)
    ids = [r["prompt_id"] for r in rows]
    X = np.concatenate([X_trait, X_bg]).astype(np.float32)
    tokens = np.r_[np.full(n_trait, 5), np.full(n_background, 7)].astype(np.int32)
    w = store.writer([KEY], [0], D, "synthetic", chunk_rows=64)
    w.add(PendingBatch(prompt_ids=ids, token_counts=tokens, truncated=np.zeros(len(ids), np.int32),
                       responses=[None] * len(ids), pooled={("resid", "last"): {0: X}}))
    w.commit()
    return store, trait_texts, bg_texts, t, z


@pytest.fixture
def nuisance(tmp_path):
    store, trait_texts, bg_texts, t, z = nuisance_store(tmp_path / "s")
    corpus = tmp_path / "background.jsonl"
    corpus.write_text("".join(json.dumps({"text": x}) + "\n" for x in bg_texts))
    return tmp_path / "s", corpus, bg_texts, t, z


def test_top_precision_breaks_ties_against_the_positives_and_specificity_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from traitlens.pipeline.extract.specificity import specificity, top_precision

    p = np.array([5.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    pos = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    assert top_precision(p, pos, 0.1) == 0.5  # k = 2: the tie at 5.0 puts the negative first
    assert top_precision(p, pos, 0.2) == 2 / 3  # k = 3
    rng = np.random.default_rng(1)
    held, held_pos, bg = rng.standard_normal(40), rng.random(40) < 0.5, rng.standard_normal(60) - 0.5
    got = specificity(held, held_pos, bg)
    assert got["spec_auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(held_pos.sum()), np.zeros(60)],
                                                            np.r_[held[held_pos], bg]))
    pool, pool_pos = np.r_[held, bg], np.r_[held_pos, np.zeros(60, bool)]
    top = np.argsort(-pool, kind="stable")[:math.ceil(0.1 * 100)]
    assert got["spec_precision"] == pool_pos[top].mean() and got["spec_base"] == held_pos.sum() / 100


def test_a_background_makes_the_methods_that_take_it_specific_and_is_recorded(nuisance):
    from traitlens.pipeline.extract.config import ExtractConfig
    from traitlens.pipeline.extract.jobs import extract

    store_path, corpus, bg_texts, t, z = nuisance
    ids = {prompt_id_for(x, None) for x in bg_texts}
    plain = extract(store_path, "planted", "mean_diff,probe,pca_diff,random", cfg=ExtractConfig(n_boot=0))
    withbg = extract(store_path, "planted", "mean_diff,probe,pca_diff,random", cfg=ExtractConfig(n_boot=0),
                     background=(ids, str(corpus)))
    before = {r["method"]: r for r in plain.records}
    after = {r["method"]: r for r in withbg.records}
    assert all(r.get("spec_auroc") is None for r in before.values())
    assert {r["vector_id"] for r in before.values()}.isdisjoint(r["vector_id"] for r in after.values())
    # without a background the probe and the mean difference read the nuisance too; with it they turn to t
    for m in ("mean_diff", "probe"):
        v_plain, v_bg = np.asarray(before[m]["vector"]), np.asarray(after[m]["vector"])
        assert abs(v_plain @ z) > 0.5 and abs(v_bg @ t) > abs(v_plain @ t) and abs(v_bg @ z) < abs(v_plain @ z)
    assert after["probe"]["spec_auroc"] > 0.9 and after["probe"]["spec_precision"] > 0.9
    # pca_diff does not take the background: the same direction, now with its (poor) specificity beside it
    assert np.allclose(before["pca_diff"]["vector"], after["pca_diff"]["vector"])
    assert after["pca_diff"]["spec_auroc"] < 0.8
    for m, r in after.items():
        info = json.loads(r["info"])["background"]
        assert info["corpus"] == str(corpus) and info["negatives"] == (m in ("mean_diff", "probe"))
        assert info["n_train"] + info["n_held"] == len(bg_texts) and r["n_background"] == info["n_held"]
    # the figure, recomputed from the stored rows and splits
    store = Store.open(store_path)
    prompts = {p["prompt_id"]: p for p in store.prompts().to_pylist()}
    rows = store.group_rows(KEY, ["row", "prompt_id"]).to_pylist()
    X = np.asarray(store.layer_array(KEY, 0)[:])
    held = [r for r in rows if prompts[r["prompt_id"]]["trait"] == "planted"
            and prompts[r["prompt_id"]]["split"] == after["probe"]["held_split"]]
    bg_held = [r for r in rows if prompts[r["prompt_id"]]["trait"] == "other" and prompts[r["prompt_id"]]["split"] != "train"]
    v = np.asarray(after["probe"]["vector"], dtype=np.float64)
    p_held = X[[r["row"] for r in held]] @ v
    pos = np.array([prompts[r["prompt_id"]]["label"] == 1 for r in held])
    p_bg = X[[r["row"] for r in bg_held]] @ v
    from sklearn.metrics import roc_auc_score

    assert after["probe"]["spec_auroc"] == pytest.approx(
        roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(len(p_bg))], np.r_[p_held[pos], p_bg]), abs=1e-6)
    assert after["probe"]["n_background"] == len(bg_held)
    # background prompts are longer (7 tokens against 5): oriented on train, length alone separates them
    assert after["random"]["spec_floor_length"] == 1.0
    again = extract(store_path, "planted", "mean_diff,probe,pca_diff,random", cfg=ExtractConfig(n_boot=0),
                    background=(ids, str(corpus)))
    assert again.n_new == 0


def test_rank_shows_the_figure_and_can_pick_by_it_and_score_gives_background_percentiles(nuisance, tmp_path):
    store_path, corpus, bg_texts, t, z = nuisance
    r = run_cli("--store", store_path, "extract", "--trait", "planted", "--methods", "mean_diff,pca_diff,random",
                "--n-boot", 0, "--background", corpus)
    assert r.exit_code == 0, r.output
    assert "spec.P10" in r.output and "token count alone" in r.output
    r = run_cli("--store", store_path, "rank", "--trait", "planted")
    assert r.exit_code == 0, r.output
    assert "beyond the corpus" in r.output and "top-decile precision" in r.output and "spec_precision" in r.output
    r = run_cli("--store", store_path, "rank", "--trait", "planted", "--by", "spec_auroc", "--format", "json")
    rows = json.loads(r.output)["rows"]
    assert rows[0]["method"] == "mean_diff" and rows[0]["spec_auroc"] == max(x["spec_auroc"] for x in rows)
    out = tmp_path / "top.jsonl"
    r = run_cli("--store", store_path, "score", "--trait", "planted", "--background", corpus, "--top", 5, "-o", out)
    assert r.exit_code == 0, r.output
    assert "bg.pct" in r.output and "99th percentile" in r.output
    from traitlens.queries import StoreSQL

    ids = {prompt_id_for(x, None) for x in bg_texts}
    vector_id = re.search(r"\(([0-9a-f]{16})\) of 'planted'", r.output).group(1)
    with StoreSQL(store_path) as q:
        scores = q.query("SELECT prompt_id, score FROM scores WHERE vector_id = ?", [vector_id]).to_pylist()
    bg = np.array([s["score"] for s in scores if s["prompt_id"] in ids])
    for rec in map(json.loads, out.read_text().splitlines()):
        expect = (np.sum(bg < rec["score"]) + 0.5 * np.sum(bg == rec["score"])) / len(bg)
        assert rec["background_percentile"] == pytest.approx(expect)


def test_a_background_not_captured_in_the_group_is_refused_before_anything_is_written(nuisance, tmp_path):
    store_path, corpus, bg_texts, t, z = nuisance
    extra = tmp_path / "more.jsonl"
    extra.write_text(corpus.read_text() + json.dumps({"text": "never captured"}) + "\n")
    n_vectors = Store.open(store_path).table("vectors").num_rows
    r = run_cli("--store", store_path, "extract", "--trait", "planted", "--background", extra)
    assert r.exit_code == 2 and "1 of its 401 prompts are not captured" in r.output and "traitlens ingest" in r.output
    assert Store.open(store_path).table("vectors").num_rows == n_vectors
