"""Interop: a TransformerLens-style ActivationCache in, exported directions out.

The cache is built the way TransformerLens fills one (``blocks.N.hook_resid_post`` = output of
block N = Hugging Face ``hidden_states[N + 1]``), from a padded batch; what lands in the store
must equal what ``traitlens ingest`` captures for the same prompts on the same model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.testing import synthetic_store
from traitlens.pipeline.extract.export import latest_per_layer, to_gguf, to_safetensors
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.interop import ingest_activation_cache, load_directions, to_steering_vector
from traitlens.store import GroupKey, Store, verify

TEXTS = ["the sea is calm tonight", "a kind word", "stars over the quiet harbour and the old lighthouse",
         "bread", "please help me write a short poem about the sky", "rude reply", "lazy dog sleeps", "hello"]
F16 = dict(rtol=2e-3, atol=2e-3)


def padded_cache(lm, texts, names="hook_resid_post"):
    """(cache dict, attention_mask) for a right-padded batch, hooks named like TransformerLens."""
    enc = [lm.tokenizer(t)["input_ids"] for t in texts]
    T = max(map(len, enc))
    ids = torch.full((len(enc), T), lm.tokenizer.pad_token_id or 0)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), 1
    with torch.no_grad():
        hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # the last entry of hidden_states has the final norm applied; TransformerLens's resid_post has not
    return {f"blocks.{l}.{names}": hs[l + 1] for l in range(lm.n_layers - 1)}, mask


def test_cache_rows_equal_traitlens_capture_of_the_same_prompts(tmp_path, tiny_lms):
    lm = tiny_lms["llama"]
    cache, mask = padded_cache(lm, TEXTS)
    prompts = [{"text": t, "label": 1 if i % 2 else -1, "trait": "kind"} for i, t in enumerate(TEXTS)]
    got = ingest_activation_cache(tmp_path / "a", cache, prompts, attention_mask=mask, model_key="tiny-tl")
    assert got["n_captured"] == len(TEXTS) and got["layers"] == list(range(lm.n_layers - 1))
    corpus = tmp_path / "c.jsonl"
    import json

    corpus.write_text("\n".join(json.dumps(p) for p in prompts) + "\n")
    ingest(tmp_path / "b", [corpus], cfg=IngestConfig(chat=False), lm=lm, progress=False)
    a, b = Store.open(tmp_path / "a"), Store.open(tmp_path / "b")
    assert verify(a).clean
    for pooling in ("last", "mean"):
        ka, kb = GroupKey("tiny-tl", "raw", "resid", pooling), GroupKey(lm.key, "raw", "resid", pooling)
        ida, idb = a.group_rows(ka)["prompt_id"].to_pylist(), b.group_rows(kb)["prompt_id"].to_pylist()
        assert sorted(ida) == sorted(idb)
        order = [idb.index(p) for p in ida]
        for layer in got["layers"]:
            np.testing.assert_allclose(a.activations(ka, layer), b.activations(kb, layer)[order], **F16)
    # the prompts table carries the labels, so extraction and SQL work on cache-made rows as on any
    assert sorted(a.prompts()["label"].to_pylist()) == sorted(p["label"] for p in prompts)
    again = ingest_activation_cache(tmp_path / "a", cache, prompts, attention_mask=mask, model_key="tiny-tl")
    assert (again["n_captured"], again["n_skipped"]) == (0, len(TEXTS))


def test_bridge_hook_names_and_unbatched_caches(tmp_path, tiny_lms):
    lm = tiny_lms["gpt2"]
    cache, mask = padded_cache(lm, TEXTS[:1], names="hook_out")  # TransformerBridge's own names
    single = {k: v[0] for k, v in cache.items()}  # run_with_cache(..., remove_batch_dim=True)
    r = ingest_activation_cache(tmp_path / "s", single, ["the sea is calm tonight"], model_key="g")
    assert r["n_captured"] == 1
    key = GroupKey("g", "raw", "resid", "mean")
    np.testing.assert_allclose(Store.open(tmp_path / "s").activations(key, 0)[0], cache["blocks.0.hook_out"][0].mean(0),
                               **F16)


def test_cache_errors_name_the_fix(tmp_path, tiny_lms):
    lm = tiny_lms["llama"]
    cache, mask = padded_cache(lm, TEXTS[:3])
    with pytest.raises(ValueError, match="3 sequences but 2 prompts"):
        ingest_activation_cache(tmp_path / "s", cache, TEXTS[:2], attention_mask=mask, model_key="m")
    with pytest.raises(ValueError, match="pass model_key"):
        ingest_activation_cache(tmp_path / "s", cache, TEXTS[:3], attention_mask=mask)
    with pytest.raises(ValueError, match="no mlp_out hooks .*names_filter"):
        ingest_activation_cache(tmp_path / "s", cache, TEXTS[:3], attention_mask=mask, model_key="m",
                                sites=("mlp_out",))
    with pytest.raises(ValueError, match="attention_mask is"):
        ingest_activation_cache(tmp_path / "s", cache, TEXTS[:3], attention_mask=mask[:, :2], model_key="m")
    broken = dict(cache)
    broken["blocks.1.hook_resid_post"] = broken["blocks.1.hook_resid_post"][:, :-1]
    with pytest.raises(ValueError, match=r"blocks.1.hook_resid_post.*expected"):
        ingest_activation_cache(tmp_path / "s", broken, TEXTS[:3], attention_mask=mask, model_key="m")
    assert not (tmp_path / "s").exists()  # every check runs before the store is touched


def test_exports_load_back_for_steering_libraries(tmp_path):
    store, _ = synthetic_store(tmp_path / "s", n=200, d=16, layers=(0, 1, 2), sep=4.0)
    extract(store.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))
    rows = latest_per_layer([r for r in Store.open(store.root).table("vectors").to_pylist()])
    want = {r["layer"]: np.asarray(r["vector"], np.float32) for r in rows}
    st = load_directions(to_safetensors(rows, tmp_path / "v.safetensors", scale=2.0))
    gg = load_directions(to_gguf(rows, tmp_path / "v.gguf", scale=2.0))
    assert sorted(st) == [0, 1, 2] and sorted(gg) == [1, 2]  # llama.cpp (and so GGUF) cannot steer block 0
    for layer, v in st.items():
        np.testing.assert_allclose(v, 2.0 * want[layer], rtol=1e-6)
    for layer, v in gg.items():
        np.testing.assert_allclose(v, 2.0 * want[layer], rtol=1e-6)
    with pytest.raises(ValueError, match="no direction"):
        from safetensors.numpy import save_file

        save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
        load_directions(tmp_path / "other.safetensors")
    sv_mod = pytest.importorskip("steering_vectors")
    sv = to_steering_vector(tmp_path / "v.safetensors", scale=0.5)
    assert isinstance(sv, sv_mod.SteeringVector) and sorted(sv.layer_activations) == [0, 1, 2]
    np.testing.assert_allclose(sv.layer_activations[1].numpy(), want[1], rtol=1e-6)


def test_steering_vectors_applies_the_same_push_as_traitlens(tiny_lms):
    pytest.importorskip("steering_vectors")
    from traitlens.pipeline.steer.steering import steering

    lm = tiny_lms["llama"]
    v = np.random.default_rng(3).standard_normal(lm.d_model).astype(np.float32)
    v /= np.linalg.norm(v)
    ids = torch.tensor([lm.tokenizer("the sea is calm tonight")["input_ids"]])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with steering(lm, v, 1, alpha=1.0, scale=3.0):
            ours = lm.model(input_ids=ids).logits
        with to_steering_vector({1: v}, scale=3.0).apply(lm.model):
            theirs = lm.model(input_ids=ids).logits
    assert not torch.allclose(ours, plain, atol=1e-3)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_exports_carry_their_card_and_refuse_another_model(tmp_path):
    from click.testing import CliRunner

    from traitlens.pipeline.extract.export import read_card
    from traitlens.testing import KEY
    from traitlens.workflows.cli import cli

    store, _ = synthetic_store(tmp_path / "s", n=200, d=16, layers=(0, 1, 2), sep=4.0)
    extract(store.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))
    rows = {r["layer"]: r for r in Store.open(store.root).table("vectors").to_pylist()}
    from traitlens.store import tables  # a steering pick for layer 1, as `evaluate --steering` stores it

    tables.write_part(store.tables_path / "steering", tables.rows_to_table(
        [{"vector_id": rows[1]["vector_id"], "trait": "planted", "method": "mean_diff", "layer": 1, "alpha": 0.1,
          "kind": "persona", "n": 4, "shift": 0.9, "ci_low": 0.8, "ci_high": 1.0, "kl": 0.05}], tables.STEERING_SCHEMA),
        tables.STEERING_SCHEMA)
    run = lambda *a: CliRunner().invoke(cli, ["--store", str(store.root), *map(str, a)])  # noqa: E731
    for fmt, name in (("safetensors", "v.safetensors"), ("gguf", "v.gguf"), ("easysteer", "e.gguf")):
        r = run("export", "--trait", "planted", "--format", fmt, "-o", tmp_path / name)
        assert r.exit_code == 0 and "steering picks of 1 layers" in r.output, r.output
        card = read_card(tmp_path / name)
        assert card["model_key"] == KEY.model_key and card["site"] == "resid" and card["pooling"] == "last"
        assert card["method"] == "mean_diff" and card["code_version"] and "block N" in card["layer_convention"]
        layer1 = card["layers"]["1"]
        assert layer1["vector_id"] == rows[1]["vector_id"] and layer1["fingerprint"] == rows[1]["fingerprint"]
        assert layer1["auroc"] == pytest.approx(rows[1]["auroc"]) and layer1["steering"]["shift"] == 0.9
        assert "steering" not in card["layers"]["2"]
        assert sorted(load_directions(tmp_path / name, KEY.model_key)) == ([1, 2] if fmt == "gguf" else [0, 1, 2])
        with pytest.raises(ValueError, match=f"holds vectors of model {KEY.model_key}, not of SmolLM2-other"):
            load_directions(tmp_path / name, "SmolLM2-other")
    import gguf  # EasySteer's reader: controlvector arch, model_hint, method, a direction.<layer> per layer

    reader = gguf.GGUFReader(str(tmp_path / "e.gguf"))
    text = lambda k: bytes(reader.get_field(k).parts[-1]).decode()  # noqa: E731
    assert text("general.architecture") == "controlvector" and text("controlvector.method") == "mean_diff"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 3
    assert sorted(t.name for t in reader.tensors) == ["direction.0", "direction.1", "direction.2"]
    with pytest.raises(ValueError, match="not of other-model"):
        to_steering_vector(tmp_path / "v.safetensors", model_key="other-model")
