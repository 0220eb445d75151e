"""Extraction over a store: Dask scheduling, out-of-core equality, provenance, bad input, export."""

from __future__ import annotations

import json

import os
import sys

import numpy as np
import pytest

from traitlens.store import Store
from traitlens.testing import KEY, store_copy, synthetic_store
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.extract.methods import ExtractionError


def by_layer_method(records):
    return {(r["layer"], r["method"]): r for r in records}


@pytest.fixture(scope="module")
def pristine_planted(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("syn") / "s", n=600, d=24, layers=(0, 1, 2), sep=4.0)


@pytest.fixture
def planted_store(pristine_planted, tmp_path_factory):
    """Each test extracts into its own copy: no count depends on which tests ran before."""
    store, dirs = pristine_planted
    return store_copy(store, tmp_path_factory.mktemp("planted") / "s"), dirs


def test_extract_all_methods_all_layers_with_metrics(planted_store, tmp_path):
    store, dirs = planted_store
    res = extract(store.root, "planted", cfg=ExtractConfig(n_boot=3))
    assert sorted({r["method"] for r in res.records}) == sorted(["mean_diff", "pca_diff", "ica", "probe", "gradient",
                                                                  "random"])
    assert res.layers == [0, 1, 2] and len(res.records) == 18
    recs = by_layer_method(res.records)
    for layer, u in dirs.items():
        assert np.dot(recs[(layer, "mean_diff")]["vector"], u) > 0.9
        for m in ("mean_diff", "probe", "gradient", "ica"):
            r = recs[(layer, m)]
            # whitening methods aim at cov^-1 delta, which anisotropic noise tilts away from u
            assert np.dot(r["vector"], u) > 0.75, (layer, m)
            assert r["auroc"] > 0.85 and r["polarity"] == 1 and r["p_value"] < 1e-4
            assert 0.8 < r["stability"] <= 1.0
            assert np.isclose(np.linalg.norm(r["vector"]), 1.0, atol=1e-5)
        for m in ("probe", "gradient"):  # whitening the nuisance dimensions pays on held-out rows
            assert recs[(layer, m)]["auroc"] >= recs[(layer, "mean_diff")]["auroc"] - 0.02
        rnd = recs[(layer, "random")]
        assert rnd["auroc"] < recs[(layer, "probe")]["auroc"] and rnd["stability"] < 0.5  # the floor
        assert json.loads(recs[(layer, "probe")]["cosines"])["mean_diff"] > 0.8
    stored = store.table("vectors").to_pylist()
    assert len(stored) == 18
    r0 = stored[0]
    assert r0["held_split"] == "val" and r0["n_pos"] + r0["n_neg"] > 400 and r0["fingerprint"]
    assert r0["code_version"] and r0["run_id"].startswith("extract-")


def test_rerun_is_idempotent(planted_store):
    store, _ = planted_store
    a = extract(store.root, "planted", methods="mean_diff,probe", layers="1", cfg=ExtractConfig(n_boot=0))
    b = extract(store.root, "planted", methods="mean_diff,probe", layers="1", cfg=ExtractConfig(n_boot=0))
    assert b.n_new == 0 and b.n_existing == 2 and b.computed_layers == []  # nothing recomputed
    c = extract(store.root, "planted", methods="mean_diff,probe", layers="1", cfg=ExtractConfig(
        n_boot=0, params={"probe": {"C": 0.5}}))
    assert c.computed_layers == [1] and c.n_new == 1  # the changed probe params: only that vector is new
    for ra, rb in zip(a.records, b.records):
        assert ra["vector"] == rb["vector"]


@pytest.mark.parametrize("with_torch", [True, False])
def test_row_stream_serves_the_stored_rows_on_every_pass_within_its_cache(planted_store, monkeypatch, with_torch):
    """Cached or read again, as a slice or as scattered rows, converted by torch or by NumPy:
    every pass yields exactly the rows asked for (each block copied before the next, since the
    stream reuses its buffer), and the cache never holds more than its budget."""
    import torch  # noqa: F401

    from traitlens.pipeline.extract.streaming import RowStream

    if not with_torch:
        monkeypatch.delitem(sys.modules, "torch")

    store, _ = planted_store
    arr = store.layer_array(KEY, 1)
    full = np.asarray(arr[:], dtype=np.float32)
    rng = np.random.default_rng(0)
    for rows in (np.arange(5, 590), np.sort(rng.choice(600, 40, replace=False))):  # dense, sparse
        pos = rng.random(len(rows)) < 0.5
        for cache in (0, 10 * 24 * 2 * 64, 1 << 30):
            stream = RowStream(arr, rows, pos, block_rows=64, cache_bytes=cache)
            for _ in range(3):
                X = np.concatenate([b.copy() for b, _ in stream()])
                np.testing.assert_array_equal(X, full[rows])
                assert np.concatenate([p for _, p in stream()]).tolist() == pos.tolist()
            assert stream.cached <= cache and (cache < 1 << 30 or len(stream.cache) == -(-len(rows) // 64))


def test_float16_to_float32_by_torch_and_numpy_is_exact(monkeypatch):
    """Every float16 value (subnormals, infinities, NaN included) converts to the float32 NumPy
    gives it, by either converter; float32 passes through uncopied."""
    import torch  # noqa: F401

    from traitlens.pipeline.extract.streaming import as_float32

    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    want = every.astype(np.float32)
    out = np.empty((300, 256), np.float32)
    np.testing.assert_array_equal(as_float32(every.copy(), out), want)  # (array_equal: NaN == NaN)
    monkeypatch.delitem(sys.modules, "torch")
    out[:] = 0
    np.testing.assert_array_equal(as_float32(every.copy(), out), want)
    f32 = want.copy()
    assert as_float32(f32, out) is f32


def test_out_of_core_matches_in_memory(planted_store):
    store, _ = planted_store
    full = extract(store.root, "planted", cfg=ExtractConfig(n_boot=0), skip_unchanged=False)
    small = extract(store.root, "planted", cfg=ExtractConfig(n_boot=0, memory_budget=2 * 24 * 8 * 40, chunk_rows=40),
                    skip_unchanged=False)
    assert all(r["out_of_core"] for r in small.records) and not any(r["out_of_core"] for r in full.records)
    a, b = by_layer_method(full.records), by_layer_method(small.records)
    for k, ra in a.items():
        va, vb = np.asarray(ra["vector"]), np.asarray(b[k]["vector"])
        if k[1] in ("mean_diff", "pca_diff", "gradient", "random"):
            np.testing.assert_allclose(va, vb, atol=2e-6)  # the same statistics, the same arithmetic
        else:
            assert va @ vb > 0.99, k
        assert abs(ra["auroc"] - b[k]["auroc"]) < 0.02


@pytest.mark.slow  # real processes or a cluster: `make test-fast` leaves it out
def test_threads_and_local_cluster_of_processes_agree(planted_store):
    from distributed import Client, LocalCluster

    store, _ = planted_store
    threads = extract(store.root, "planted", methods="mean_diff,ica,probe,gradient", cfg=ExtractConfig(n_boot=2),
                      scheduler="threads", skip_unchanged=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        procs = extract(store.root, "planted", methods="mean_diff,ica,probe,gradient", cfg=ExtractConfig(n_boot=2),
                        scheduler=client, skip_unchanged=False)
    assert procs.computed_layers == [0, 1, 2]
    a, b = by_layer_method(threads.records), by_layer_method(procs.records)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k]["vector"], b[k]["vector"], atol=1e-6)
        assert np.isclose(a[k]["stability"], b[k]["stability"])


def test_forked_processes_give_the_threads_records_and_are_the_default_for_long_runs(tmp_path):
    """The default local scheduler over several layers is forked processes (the fits and refits
    hold the GIL); they give the threaded run's vectors and stability exactly."""
    from traitlens.pipeline.extract.jobs import default_local_scheduler

    store, _ = synthetic_store(tmp_path / "s", n=200, d=16, layers=(0, 1, 2, 3))
    kw = dict(methods="all", cfg=ExtractConfig(n_boot=3), skip_unchanged=False)
    threads = extract(store.root, "planted", scheduler="threads", **kw)
    procs = extract(store.root, "planted", scheduler="processes", **kw)
    a, b = by_layer_method(threads.records), by_layer_method(procs.records)
    assert a.keys() == b.keys() and len(a) == 4 * 6
    for k in a:
        np.testing.assert_array_equal(a[k]["vector"], b[k]["vector"])
        assert a[k]["stability"] == b[k]["stability"] and a[k]["auroc"] == b[k]["auroc"]
    forks = sys.platform.startswith("linux") and (os.cpu_count() or 1) > 1
    assert default_local_scheduler(30) == ("processes" if forks else "threads")
    assert default_local_scheduler(2) == "threads"  # too little to share out


def test_streamed_layers_convert_alike_in_forked_workers_after_the_parent_used_torch(tmp_path, monkeypatch):
    """Out of core, float16 rows are converted by torch once it is loaded. Forked workers inherit
    a parent whose torch already ran its OpenMP pool (ingest then extract in one process); they
    must neither hang (each task caps the pool to its BLAS share) nor differ: the same records as
    threads converting with NumPy."""
    import faulthandler

    import torch

    import traitlens.pipeline.extract.streaming as streaming

    torch.ones(1 << 20).mul(2).sum()  # the parent's OpenMP pool is up
    store, _ = synthetic_store(tmp_path / "s", n=300, d=16, layers=(0, 1, 2, 3))
    kw = dict(methods="mean_diff,probe", cfg=ExtractConfig(n_boot=2, memory_budget=16 * 8 * 8 * 60, chunk_rows=40),
              skip_unchanged=False)
    monkeypatch.setattr(streaming, "TORCH_CAST_VALUES", 0)
    faulthandler.dump_traceback_later(300, exit=True)  # a hung fork fails the run instead of stalling CI
    try:
        procs = extract(store.root, "planted", scheduler="processes", **kw)
    finally:
        faulthandler.cancel_dump_traceback_later()
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(streaming, "TORCH_CAST_VALUES", 1 << 62)  # (and never import it again)
    threads = extract(store.root, "planted", scheduler="threads", **kw)
    assert all(r["out_of_core"] for r in procs.records) and len(procs.records) == 4 * 2
    a, b = by_layer_method(threads.records), by_layer_method(procs.records)
    for k in a:
        np.testing.assert_array_equal(a[k]["vector"], b[k]["vector"])
        assert a[k]["auroc"] == b[k]["auroc"]


def test_bad_requests_fail_clearly_and_write_nothing(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=200, d=8, layers=(0,))
    before = store.table("vectors").num_rows
    with pytest.raises(ExtractionError, match="not in the store; traits: planted"):
        extract(store.root, "nope")
    with pytest.raises(ExtractionError, match=r"--layers 5: not stored .* stored layers: \[0\]"):
        extract(store.root, "planted", layers="5")
    with pytest.raises(ExtractionError, match="unknown method"):
        extract(store.root, "planted", methods="svm")
    # a trait with positives only
    store.add_prompts([{"prompt_id": r["prompt_id"], "text": "x", "dataset": "d2", "trait": "onesided", "label": 1,
                        "split": r["split"]} for r in store.prompts().to_pylist()])
    with pytest.raises(ExtractionError, match="0 negative rows; a fit needs at least 2 of each.*Ingest 4 more negative"):
        extract(store.root, "onesided")
    assert store.table("vectors").num_rows == before


def test_extract_with_a_bootstrap_of_two_positives_and_two_negatives_runs(tmp_path):
    """`extract --n-boot 2` on 2 + 2 training rows at residual-stream magnitudes: a resample that
    draws one row twice per class once crashed gradient's fit with a LinAlgError traceback."""
    from click.testing import CliRunner
    from traitlens.workflows.cli import cli

    store, _ = synthetic_store(tmp_path / "s", n=40, d=24, layers=(0,), scale=300.0)
    prompts = store.table("prompts").to_pylist()
    train = [r for r in prompts if r["split"] == "train"]
    rows = ([r for r in train if r["label"] == 1][:2] + [r for r in train if r["label"] == -1][:2]
            + [r for r in prompts if r["split"] != "train"])
    where = "prompt_id IN (" + ", ".join(f"'{r['prompt_id']}'" for r in rows) + ")"
    r = CliRunner().invoke(cli, ["--store", str(store.root), "extract", "--trait", "planted", "--n-boot", "2",
                                 "--where", where, "--scheduler", "threads", "-q"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    vectors = Store.open(store.root).table("vectors").to_pylist()
    assert len(vectors) == 6 and all(v["n_pos"] == 2 and v["n_neg"] == 2 for v in vectors)
    assert all(np.isfinite(v["stability"]) for v in vectors)


def test_nonfinite_rows_are_refused(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=120, d=8, layers=(0,))
    arr = store.zarr_root(mode="a")[KEY.path]["L0"]
    arr[3, 2] = np.inf
    with pytest.raises(ExtractionError, match="NaN or inf"):
        extract(store.root, "planted", cfg=ExtractConfig(n_boot=0))
    assert store.table("vectors").num_rows == 0


def test_export_safetensors_and_gguf(planted_store, tmp_path):
    import gguf
    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from traitlens.workflows.cli import cli

    store, _ = planted_store
    extract(store.root, "planted", methods="mean_diff", cfg=ExtractConfig(n_boot=0))
    want = {r["layer"]: np.asarray(r["vector"], np.float32) for r in store.table("vectors").to_pylist()
            if r["method"] == "mean_diff"}
    st, gg = tmp_path / "v.safetensors", tmp_path / "v.gguf"
    r = CliRunner().invoke(cli, ["--store", str(store.root), "export", "--trait", "planted", "-o", str(st)])
    assert r.exit_code == 0, r.output
    got = load_file(str(st))
    assert sorted(got) == [f"direction.{l}" for l in sorted(want)]
    for l, v in want.items():
        np.testing.assert_array_equal(got[f"direction.{l}"], v)
    r = CliRunner().invoke(cli, ["--store", str(store.root), "export", "--trait", "planted", "--format", "gguf",
                                 "--scale", "2", "-o", str(gg)])
    assert r.exit_code == 0, r.output
    reader = gguf.GGUFReader(str(gg))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2"]  # llama.cpp cannot steer layer 0
    np.testing.assert_allclose(tensors["direction.2"], 2 * want[2])
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "controlvector"


def test_every_input_of_a_vector_changes_its_identity(tmp_path):
    """Change one input at a time: each gives new vectors, never the stored ones (which would
    keep the old metrics); the same inputs again give the same ids."""
    store, _ = synthetic_store(tmp_path / "s", n=300, d=12, layers=(0,), sep=4.0)

    def ids(**kw):
        cfg = ExtractConfig(n_boot=kw.pop("n_boot", 0), seed=kw.pop("seed", 0), params=kw.pop("params", {}))
        res = extract(store.root, "planted", methods=kw.pop("methods", "mean_diff,random"), cfg=cfg, **kw)
        return {(r["method"], r["layer"]): r["vector_id"] for r in res.records}, res

    base, _ = ids()
    assert ids()[0] == base  # same inputs, same ids
    every = {("mean_diff", 0), ("random", 0)}
    for change, changed in (({"n_boot": 2}, every), ({"seed": 3}, every), ({"held_split": "test"}, every),
                            ({"where": "length(text) > 18"}, every),
                            ({"params": {"random": {"seed": 9}}}, {("random", 0)})):  # one method's own params
        got, res = ids(**dict(change))
        assert {k for k in got if got[k] != base[k]} == changed, change
        assert res.n_new >= len(changed), change
    _, res = ids(held_split="test")
    assert all(r["held_split"] == "test" for r in res.records)  # the metrics are the test split's


def test_extract_honours_the_methods_of_its_config(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=200, d=8, layers=(0,), sep=4.0)
    res = extract(store.root, "planted", cfg=ExtractConfig(methods=["mean_diff"], n_boot=0))
    assert res.methods == ["mean_diff"] and {r["method"] for r in res.records} == {"mean_diff"}


def test_contrastive_set_matches_a_plain_construction_and_refuses_disagreeing_labels(tmp_path):
    """The column-wise set equals the obvious loop over records: a second dataset's records of
    the same prompts (the last one's split wins), label-0 and other-trait records left out, a
    prompt-id restriction, and the fingerprint over the sorted (prompt, label, split) lines."""
    import hashlib

    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.pipeline.extract.methods import ExtractionError

    store, _ = synthetic_store(tmp_path / "s", n=120, d=8, layers=(0,))
    base = store.prompts().to_pylist()
    extra = [{**p, "dataset": "second", "split": "test", "source": "second:1"} for p in base[:30]]
    extra += [{**p, "dataset": "third", "trait": "other", "label": -p["label"]} for p in base[30:40]]
    extra += [{**p, "dataset": "neutral", "label": 0} for p in base[40:50]]
    store.add_prompts(extra)
    only = {p["prompt_id"] for p in base[::2]}
    for ids in (None, only):
        labels = {}
        for p in store.prompts().to_pylist():  # table order: the last record of a prompt wins
            if p["trait"] == "planted" and p["label"] != 0 and (ids is None or p["prompt_id"] in ids):
                labels[p["prompt_id"]] = (p["label"], p["split"])
        rows = {r["prompt_id"]: r["row"] for r in store.group_rows(KEY).to_pylist()}
        cs = contrastive_set(store, KEY, "planted", held_split="test", prompt_ids=ids)
        for split, got_rows, got_pos in (("train", cs.train_rows, cs.train_pos), ("test", cs.held_rows, cs.held_pos)):
            want = sorted((rows[pid], lab > 0) for pid, (lab, sp) in labels.items() if sp == split)
            assert got_rows.tolist() == [r for r, _ in want] and got_pos.tolist() == [p for _, p in want]
        lines = "".join(f"{pid}\t{lab}\t{sp}\n" for pid, (lab, sp) in sorted(labels.items()))
        assert cs.fingerprint == hashlib.sha256(lines.encode()).hexdigest()[:16]
    store.add_prompts([{**base[5], "dataset": "fourth", "label": -base[5]["label"]}])
    with pytest.raises(ExtractionError, match="two datasets disagree"):
        contrastive_set(store, KEY, "planted")


def confounded_store(path, n=400, d=16, seed=0):
    """Labels that are prompt length in disguise: positives are the long prompts, and the
    activations carry length (as a real model's do) but nothing else about the label. Two
    datasets, one holding most of the positives."""
    from traitlens.pipeline.capture.corpus import prompt_id_for
    from traitlens.pipeline.capture.splits import hash_split
    from traitlens.store import PendingBatch, Store

    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 60, n).astype(np.int32)
    labels = np.where(tokens > np.median(tokens), 1, -1)
    ids = [prompt_id_for(f"confounded {i}", None) for i in range(n)]
    datasets = ["long-file" if (labels[i] > 0) == (rng.random() < 0.8) else "short-file" for i in range(n)]
    store = Store.open(path, create=True)
    store.add_prompts([{"prompt_id": p, "text": f"confounded {i}", "dataset": datasets[i], "trait": "wordy",
                        "label": int(labels[i]), "split": hash_split(p)} for i, p in enumerate(ids)])
    u = rng.standard_normal(d)
    X = (rng.standard_normal((n, d)) + np.outer((tokens - tokens.mean()) / tokens.std(), u)).astype(np.float32)
    w = store.writer([KEY], [0], d, "confounded", chunk_rows=64)
    w.add(PendingBatch(ids, tokens, np.zeros(n, np.int32), [None] * n, {("resid", "last"): {0: X}}))
    w.commit()
    return store, tokens, labels, datasets, ids


def test_nuisance_floors_catch_a_length_confound_and_match_an_independent_computation(tmp_path):
    from click.testing import CliRunner
    from sklearn.metrics import roc_auc_score

    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.workflows.cli import cli

    store, tokens, labels, datasets, ids = confounded_store(tmp_path / "s")
    res = extract(store.root, "wordy", methods="mean_diff,probe,random", cfg=ExtractConfig(n_boot=0))
    rec = res.records[0]
    # independently: orient length on train, score it on the held-out rows; the dataset floor
    # from each dataset's (smoothed) share of positives among the train rows
    cs = contrastive_set(store, KEY, "wordy")
    row_of = {r["prompt_id"]: r["row"] for r in store.group_rows(KEY).to_pylist()}
    by_row = {row_of[p]: i for i, p in enumerate(ids)}
    tr, he = [by_row[r] for r in cs.train_rows], [by_row[r] for r in cs.held_rows]
    sign = 1 if roc_auc_score(labels[tr] > 0, tokens[tr]) >= 0.5 else -1
    assert np.isclose(rec["floor_length"], roc_auc_score(labels[he] > 0, sign * tokens[he]))
    assert rec["floor_length"] > 0.95  # the label is length
    share = {}
    for ds in set(datasets):
        members = [i for i in tr if datasets[i] == ds]
        share[ds] = (sum(labels[i] > 0 for i in members) + 1) / (len(members) + 2)
    assert np.isclose(rec["floor_dataset"], roc_auc_score(labels[he] > 0, [share[datasets[i]] for i in he]))
    assert 0.65 < rec["floor_dataset"] < 0.95
    # the vectors classify well, and are flagged: they do not beat the length floor
    out = CliRunner().invoke(cli, ["--store", str(store.root), "rank", "--trait", "wordy"])
    assert out.exit_code == 0, out.output
    assert "token count" in out.output and "flag:" in out.output and "may read the token count" in out.output


def test_an_honest_trait_clears_its_floors(planted_store):
    from traitlens.pipeline.extract.floors import floor_flag

    store, _ = planted_store
    res = extract(store.root, "planted", methods="mean_diff,random", layers="1", cfg=ExtractConfig(n_boot=0))
    md = next(r for r in res.records if r["method"] == "mean_diff")
    rnd = next(r for r in res.records if r["method"] == "random")
    assert md["floor_length"] == 0.5 and md["floor_dataset"] is None  # one length, one dataset: no signal
    assert floor_flag(md, rnd["auroc"]) is None and md["auroc"] > 0.9


def test_audit_finds_planted_flipped_labels(tmp_path):
    """Ten train prompts relabelled to the other side of a clearly separated trait: the audit
    lists exactly them first (with overlapping classes genuine tail rows mix in, as they should)."""
    import json

    from click.testing import CliRunner

    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.workflows.cli import cli

    store, _ = synthetic_store(tmp_path / "s", n=400, d=16, layers=(0,), sep=12.0)
    train = [p for p in store.prompts().to_pylist() if p["split"] == "train"]
    flipped = train[:10]
    store.add_prompts([{**p, "label": -p["label"]} for p in flipped])  # the newest record wins
    assert contrastive_set(store, KEY, "planted").n_pos > 0
    extract(store.root, "planted", methods="mean_diff", cfg=ExtractConfig(n_boot=0))
    r = CliRunner().invoke(cli, ["--store", str(store.root), "audit", "--trait", "planted", "--top", "10",
                                 "--format", "json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)["rows"]
    assert {g["prompt_id"] for g in got} == {p["prompt_id"] for p in flipped}
    assert all(g["depth"] < -1 for g in got) and [g["depth"] for g in got] == sorted(g["depth"] for g in got)
    assert all(g["label"] == -p["label"] for g in got for p in flipped if p["prompt_id"] == g["prompt_id"])
    table = CliRunner().invoke(cli, ["--store", str(store.root), "audit", "--trait", "planted", "--top", "3"])
    assert table.exit_code == 0 and table.output.count("synthetic prompt") == 3, table.output


def test_score_projects_every_stored_prompt_once_and_calibrates_on_the_held_out_means(tmp_path):
    from click.testing import CliRunner

    from traitlens.pipeline.capture.corpus import prompt_id_for
    from traitlens.pipeline.capture.splits import hash_split
    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.queries import StoreSQL
    from traitlens.store import PendingBatch
    from traitlens.workflows.cli import cli

    def cli_run(*args):
        r = CliRunner().invoke(cli, ["--store", str(tmp_path / "s"), *map(str, args)])
        assert r.exit_code == 0, r.output
        return r.output

    store, _ = synthetic_store(tmp_path / "s", n=300, d=12, layers=(0, 1), sep=4.0)
    extract(store.root, "planted", methods="mean_diff,probe", cfg=ExtractConfig(n_boot=0))
    out = cli_run("score", "--trait", "planted", "--top", "3")
    assert "300 prompts scored, 0 already scored" in out
    with StoreSQL(store) as q:
        got = q.query("SELECT prompt_id, vector_id, layer, score, calibrated, percentile FROM scores").to_pylist()
        vec = q.query("SELECT * FROM vectors WHERE vector_id = ?", [got[0]["vector_id"]]).to_pylist()[0]
    # independently: the stored rows times the unit vector
    rows = {r["prompt_id"]: r["row"] for r in store.group_rows(KEY).to_pylist()}
    X = store.activations(KEY, vec["layer"]).astype(np.float64)
    v = np.asarray(vec["vector"], np.float64)
    assert len(got) == 300 and len({g["prompt_id"] for g in got}) == 300
    for g in got:
        assert np.isclose(g["score"], X[rows[g["prompt_id"]]] @ v, rtol=1e-5, atol=1e-5)
    # the percentile, independently: the share of the other prompts scored lower on this vector
    ordered = sorted(g["score"] for g in got)
    for g in got:
        assert g["percentile"] == pytest.approx(ordered.index(g["score"]) / (len(got) - 1))
    cs = contrastive_set(store, KEY, "planted", held_split=vec["held_split"])
    by_row = {rows[g["prompt_id"]]: g["calibrated"] for g in got}
    assert np.isclose(np.mean([by_row[r] for r in cs.held_rows[cs.held_pos]]), 1.0)
    assert np.isclose(np.mean([by_row[r] for r in cs.held_rows[~cs.held_pos]]), 0.0, atol=1e-9)
    # a rerun writes nothing
    parts = sorted((tmp_path / "s" / "tables" / "scores").iterdir())
    assert "0 prompts scored, 300 already scored" in cli_run("score", "--trait", "planted")
    assert sorted((tmp_path / "s" / "tables" / "scores").iterdir()) == parts
    # the store grows by 20 prompts: only they are scored
    ids = [prompt_id_for(f"new prompt {i}", None) for i in range(20)]
    store.add_prompts([{"prompt_id": p, "text": f"new prompt {i}", "dataset": "late", "trait": "planted", "label": 1,
                        "split": hash_split(p)} for i, p in enumerate(ids)])
    w = store.writer([KEY], [0, 1], 12, "grow", chunk_rows=32)
    rng = np.random.default_rng(5)
    w.add(PendingBatch(ids, np.full(20, 5, np.int32), np.zeros(20, np.int32), [None] * 20,
                       {("resid", "last"): {0: rng.standard_normal((20, 12)).astype(np.float32),
                                            1: rng.standard_normal((20, 12)).astype(np.float32)}}))
    w.commit()
    assert "20 prompts scored, 300 already scored" in cli_run("score", "--trait", "planted",
                                                              "--vector-id", vec["vector_id"])
    assert "0 prompts scored, 2 already scored" in cli_run("score", "--trait", "planted", "--vector-id",
                                                          vec["vector_id"], "--where",
                                                          f"prompt_id IN ('{ids[0]}', '{ids[1]}')")


def test_progress_bar_survives_a_signal_before_dask_starts():
    """A Ctrl-C or SIGTERM that lands before Dask's first task ends the run through the
    progress callback's finish, which must not fail on a bar it never opened (the traceback
    would hide the signal's exit code)."""
    from pipeline.extract.jobs import _layer_progress

    bar = _layer_progress()
    bar._finish(None, None, None)  # no _start_state yet
    assert not hasattr(bar, "pbar")
