"""`traitlens import`: vectors from repeng / llama.cpp GGUF, steering-vectors and persona_vectors
`.pt` and safetensors enter the vectors table at the right layer (export then import gives the
same vector at the same layer; each tool's index convention), with their provenance, and then
rank, evaluate and steer beside the store's own; a bad file is exit 2 and writes nothing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from traitlens.store import Store
from traitlens.testing import make_model, write_corpus
from traitlens.workflows.cli import cli

TRAIT = "kindness"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    model = make_model("llama", root / "model")
    store = root / "store"
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(store), *map(str, a)])  # noqa: E731
    assert go("ingest", write_corpus(root / "c.jsonl", 120), "--model", model, "--quiet").exit_code == 0
    assert go("extract", "--trait", TRAIT, "--methods", "mean_diff", "--quiet").exit_code == 0
    own = {r["layer"]: r for r in Store.open(store).table("vectors").to_pylist()}
    return model, store, go, own


@pytest.fixture()
def fresh(setup, tmp_path):
    """A private copy of the module's store (imports write into it)."""
    from traitlens.testing import store_copy

    model, store, _, own = setup
    copy = store_copy(store, tmp_path / "store")
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(copy.root), *map(str, a)])  # noqa: E731
    return model, copy.root, go, own


def vectors(store, method):
    return {r["layer"]: r for r in Store.open(store).table("vectors").to_pylist() if r["method"] == method}


def key_of(own):
    return own[0]["model_key"]


def test_export_then_import_gives_the_same_vector_at_the_same_layer(fresh, tmp_path):
    from traitlens.pipeline.interop import to_steering_vector

    model, store, go, own = fresh
    files = {"gguf": tmp_path / "v.gguf", "safetensors": tmp_path / "v.safetensors"}
    for fmt, out in files.items():
        assert go("export", "--trait", TRAIT, "--format", fmt, "--scale", "3", "-o", out).exit_code == 0
    sv = to_steering_vector(files["safetensors"], scale=0.5)  # steering-vectors' own object, and its layer dict
    torch.save(sv, tmp_path / "sv.pt")
    torch.save(sv.layer_activations, tmp_path / "acts.pt")
    for name, path, layers in (("from-gguf", files["gguf"], [1, 2]), ("from-st", files["safetensors"], [0, 1, 2]),
                               ("from-sv", tmp_path / "sv.pt", [0, 1, 2]), ("from-acts", tmp_path / "acts.pt", [0, 1, 2])):
        r = go("import", path, "--trait", TRAIT, "--model", key_of(own), "--name", name)
        assert r.exit_code == 0, r.output
        got = vectors(store, name)
        assert sorted(got) == layers  # (the llama.cpp GGUF holds no layer 0)
        for layer, rec in got.items():
            np.testing.assert_allclose(rec["vector"], own[layer]["vector"], atol=1e-6)
            assert rec["auroc"] == pytest.approx(own[layer]["auroc"], abs=1e-9)  # the same held-out rows and metric
            assert rec["fingerprint"] == own[layer]["fingerprint"]
        src = json.loads(got[layers[0]]["params"])["source"]
        assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and src["file"] == path.name
    r = go("import", files["safetensors"], "--trait", TRAIT, "--model", key_of(own), "--name", "from-st")
    assert r.exit_code == 0 and "imported 0 vectors (3 already stored)" in r.output  # the same file twice: once


def test_persona_vectors_rows_are_hidden_states_indices(fresh, tmp_path):
    """persona_vectors saves [n_layers + 1, d] indexed like hidden_states (row i = block i - 1's
    output; row 0 the embeddings): block L's vector is row L + 1."""
    model, store, go, own = fresh
    d = len(own[0]["vector"])
    table = torch.randn(4, d)  # 3 blocks + the embeddings
    for layer in range(3):
        table[layer + 1] = 5.0 * torch.tensor(own[layer]["vector"])
    torch.save(table, tmp_path / "kindness_response_avg_diff.pt")
    r = go("import", tmp_path / "kindness_response_avg_diff.pt", "--trait", TRAIT, "--model", key_of(own))
    assert r.exit_code == 0, r.output
    got = vectors(store, "persona-vectors")
    assert sorted(got) == [0, 1, 2]
    for layer, rec in got.items():
        np.testing.assert_allclose(rec["vector"], own[layer]["vector"], atol=1e-6)
        assert rec["raw_norm"] == pytest.approx(5.0, rel=1e-5)
        assert json.loads(rec["params"])["source"]["tensor"] == f"row {layer + 1}"
    # read as block-indexed instead, row 1 would be layer 1: the convention is what decides
    r = go("import", tmp_path / "kindness_response_avg_diff.pt", "--trait", TRAIT, "--model", key_of(own),
           "--convention", "blocks", "--name", "as-blocks", "--layers", "1")
    assert r.exit_code == 0
    np.testing.assert_allclose(vectors(store, "as-blocks")[1]["vector"], own[0]["vector"], atol=1e-6)


def test_a_repeng_gguf_imports_with_its_provenance(fresh, tmp_path):
    import gguf

    model, store, go, own = fresh
    path = tmp_path / "repeng.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")  # as repeng's ControlVector.export_gguf writes it
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 2)
    for layer in (1, 2):
        w.add_tensor(f"direction.{layer}", np.asarray(own[layer]["vector"], np.float32) * -1.0)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = go("import", path, "--trait", TRAIT, "--model", key_of(own)[:8])
    assert r.exit_code == 0, r.output
    got = vectors(store, "gguf")
    assert sorted(got) == [1, 2] and got[1]["auroc"] == pytest.approx(1 - own[1]["auroc"], abs=1e-9)
    assert "points toward the negatives" in r.output  # the other tool's sign, kept and said
    params = json.loads(got[2]["params"])
    assert params["source"]["format"] == "gguf" and params["source"]["tensor"] == "direction.2"
    assert params["model"] == key_of(own)[:8] and json.loads(got[2]["info"])["imported"] is True


def test_an_imported_vector_ranks_evaluates_and_steers_beside_the_stores_own(fresh, tmp_path):
    from traitlens.pipeline.interop import to_steering_vector

    model, store, go, own = fresh
    assert go("export", "--trait", TRAIT, "--format", "safetensors", "-o", tmp_path / "v.safetensors").exit_code == 0
    torch.save(to_steering_vector(tmp_path / "v.safetensors"), tmp_path / "sv.pt")
    assert go("import", tmp_path / "sv.pt", "--trait", TRAIT, "--model", key_of(own), "--name", "sv").exit_code == 0
    r = go("rank", "--trait", TRAIT)
    assert r.exit_code == 0 and " sv " in r.output and "mean_diff" in r.output, r.output
    r = go("evaluate", "--trait", TRAIT, "--steering", "--methods", "mean_diff,sv", "--layers", "1", "--alphas", "2",
           "--n", "6", "--reply-tokens", "0", "--no-random", "--model", model, "--plot", tmp_path / "e.png")
    assert r.exit_code == 0, r.output
    rows = {(x["method"], x["alpha"]): x for x in Store.open(store).table("steering").to_pylist()}
    ours, theirs = rows[("mean_diff", 2.0)], rows[("sv", 2.0)]
    assert theirs["vector_id"] == vectors(store, "sv")[1]["vector_id"]
    assert theirs["shift"] == pytest.approx(ours["shift"], abs=1e-6)  # the same direction steers the same
    assert theirs["kl"] == pytest.approx(ours["kl"], rel=1e-6) and theirs["kl"] > 0
    r = go("steer", "the sea", "--vector-id", vectors(store, "sv")[1]["vector_id"], "--model", model, "--alpha", "2",
           "--max-new-tokens", "3")
    assert r.exit_code == 0 and "--- steered ---" in r.output


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_files_are_exit_2_and_write_nothing(fresh, tmp_path, capsys):
    import gguf

    model, store, go, own = fresh
    d, key = len(own[0]["vector"]), key_of(own)
    bad = {}
    torch.save({"layer_activations": {1: Evil()}}, tmp_path / "evil.pt")
    bad["evil.pt"] = "weights_only"
    torch.save({1: torch.randn(d + 1)}, tmp_path / "wide.pt")
    bad["wide.pt"] = f"has width {d + 1}"
    torch.save({1: torch.full((d,), float("nan"))}, tmp_path / "nan.pt")
    bad["nan.pt"] = "not finite"
    torch.save({"layer_activations": {1: torch.randn(d)}, "layer_type": "attention"}, tmp_path / "attn.pt")
    bad["attn.pt"] = "layer_type 'attention'"
    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, d), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    bad["model.gguf"] = "not a control vector"
    (tmp_path / "notes.txt").write_text("hello")
    bad["notes.txt"] = "not a vector file"
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    bad["broken.safetensors"] = "not a readable safetensors"
    before = Store.open(store).table("vectors").num_rows
    for name, why in bad.items():
        r = go("import", tmp_path / name, "--trait", TRAIT, "--model", key)
        assert r.exit_code == 2 and why in r.output and "nothing was imported" in r.output, (name, r.output)
    assert "this must never run" not in capsys.readouterr().out
    folder = tmp_path / "mixed"  # a folder with one good file and one bad: nothing at all
    folder.mkdir()
    torch.save({1: torch.randn(d)}, folder / "good.pt")
    torch.save({1: torch.randn(d - 1)}, folder / "narrow.pt")
    r = go("import", folder, "--trait", TRAIT, "--model", key)
    assert r.exit_code == 2 and "narrow.pt" in r.output
    r = go("import", folder / "good.pt", "--trait", TRAIT, "--model", "no-such-model")
    assert r.exit_code == 2
    r = go("import", folder / "good.pt", "--trait", "no-such-trait", "--model", key)
    assert r.exit_code == 2 and "no-such-trait" in r.output
    r = go("import", folder / "good.pt", "--trait", TRAIT, "--model", key, "--name", "mean_diff")
    assert r.exit_code == 2 and "--name 'mean_diff'" in r.output
    other = tmp_path / "other.safetensors"  # a traitlens export of another model: its card refuses it
    from traitlens.pipeline.extract.export import to_safetensors

    to_safetensors([{**own[1], "model_key": "some-other-model"}], other)
    r = go("import", other, "--trait", TRAIT, "--model", key)
    assert r.exit_code == 2 and "holds vectors of model some-other-model" in r.output
    assert Store.open(store).table("vectors").num_rows == before
