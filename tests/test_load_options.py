"""How a model is loaded for capture: a device map, bitsandbytes quantisation, a dtype, a GGUF file.

CPU-only checks run everywhere (the device map's rows equal a plain load's; blocks whose weights
accelerate keeps on the host give the same rows and key; a missing bitsandbytes or device exits 2
and writes nothing; quantised rows get their own group; bfloat16/float16 rows equal the model's
own hidden states in that dtype; a GGUF file loads dequantised). The GPU ones skip, saying why.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from traitlens.pipeline.capture import receipts
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.model import loading, quantisation
from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.model.loading import LoadedModel, load_model, model_fingerprint
from traitlens.store import GroupKey, Store
from traitlens.testing import make_model, store_contents, write_corpus, write_gguf
from traitlens.workflows.cli import cli

QUIET = dict(progress=False, log=lambda *a: None)
CFG = dict(poolings=["last", "mean", "tokens"], batch_size=6, chunk_rows=8)
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (this machine has none)")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_equal_stores(a, b, **tol):
    ca, cb = store_contents(a), store_contents(b)
    assert len(ca) == len(cb) > 0
    for (pa, (ra, va)), (pb, (rb, vb)) in zip(sorted(ca.items()), sorted(cb.items())):
        assert pa.split("/", 1)[1] == pb.split("/", 1)[1] and ra == rb
        for layer in va:
            if tol:
                np.testing.assert_allclose(va[layer], vb[layer], **tol)
            else:
                np.testing.assert_array_equal(va[layer], vb[layer])


# -- --device-map -------------------------------------------------------------------------------
def test_device_map_auto_and_max_tokens_auto_give_the_rows_of_a_plain_load(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    ingest(tmp_path / "plain", [corpus], cfg=IngestConfig(model=str(tiny_llama), device="cpu", **CFG), **QUIET)
    mapped = IngestConfig(model=str(tiny_llama), device_map="auto", **{**CFG, "max_tokens": "auto"})
    res = ingest(tmp_path / "mapped", [corpus], cfg=mapped, **QUIET)
    assert res.model_key == Store.open(tmp_path / "plain").groups()[0].model_key  # a placement is not another model
    assert_equal_stores(tmp_path / "plain", tmp_path / "mapped")


def test_blocks_whose_weights_accelerate_keeps_on_the_host_give_the_same_rows_and_key(tmp_path, tiny_llama):
    """What a device map does to the blocks it places on ``cpu`` while GPUs run the rest: the
    weights stay in a host map behind a hook (the module's parameters read ``meta``) and are
    brought to the executing device per forward. accelerate's ``cpu_offload`` does exactly that
    with the CPU as the executing device, so the path runs here."""
    from accelerate import cpu_offload

    from traitlens.pipeline.model.placement import input_device

    plain = load_model(str(tiny_llama), device="cpu", log=lambda *a: None)
    lm = load_model(str(tiny_llama), device="cpu", log=lambda *a: None)
    cpu_offload(lm.model, execution_device=torch.device("cpu"))
    assert lm.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really behind the hook
    assert model_fingerprint(lm.model) == plain.key.rsplit("-", 1)[1] and input_device(lm.model).type == "cpu"
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    ingest(tmp_path / "plain", [corpus], cfg=IngestConfig(**CFG), lm=plain, **QUIET)
    ingest(tmp_path / "offloaded", [corpus], cfg=IngestConfig(**CFG), lm=lm, **QUIET)
    assert_equal_stores(tmp_path / "plain", tmp_path / "offloaded")


def test_disk_offload_and_bad_placements_are_refused_before_anything_is_written(tmp_path, tiny_llama):
    c = write_corpus(tmp_path / "c.jsonl", 4)
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--max-memory", "cpu=2000", "--quiet")
    assert r.exit_code == 2 and "on disk" in r.output and "--max-memory" in r.output
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--device-map", "auto", "--device", "cpu")
    assert r.exit_code == 2 and "leave --device at auto" in r.output
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--max-memory", "gpu0=lots")
    assert r.exit_code == 2 and "--max-memory: device 'gpu0'" in r.output
    assert not (tmp_path / "s").exists()


# -- --load-in ----------------------------------------------------------------------------------
def _no_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))


def _bitsandbytes_without_this_device(monkeypatch):
    fake = types.ModuleType("bitsandbytes")
    fake.__version__, fake.supported_torch_devices = "0.49.0", {"xpu"}
    fake.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: fake.__spec__ if name == "bitsandbytes" else real(name, *a))


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
@pytest.mark.parametrize("missing, reason", [(_no_bitsandbytes, "not installed"),
                                             (_bitsandbytes_without_this_device, "runs on xpu")])
def test_load_in_without_bitsandbytes_or_its_device_exits_2_naming_the_extra_and_writes_nothing(
        tmp_path, tiny_llama, monkeypatch, bits, missing, reason):
    missing(monkeypatch)
    c = write_corpus(tmp_path / "c.jsonl", 4)
    loaded = []
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: loaded.append(1))
    r = run("--store", tmp_path / "s", "ingest", c, "--model", tiny_llama, "--load-in", bits, "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert f"--load-in {bits}" in r.output and "[gpu]" in r.output and "pip install" in r.output and reason in r.output
    assert not loaded and not (tmp_path / "s").exists()  # refused before a weight was read or a file written


def test_quantised_rows_never_share_a_group_with_full_precision_rows(tmp_path, tiny_llama, monkeypatch):
    """The quantisation is part of the model key, and of its cached identity. (bitsandbytes is
    not needed to check that: the 4-bit config is replaced by none, so the weights load as they
    are, under a 4-bit load's key.)"""
    corpus = write_corpus(tmp_path / "c.jsonl", 8)
    plain = IngestConfig(model=str(tiny_llama), device="cpu", poolings=["last"])
    full = ingest(tmp_path / "s", [corpus], cfg=plain, **QUIET)
    four = IngestConfig(model=str(tiny_llama), device="cpu", poolings=["last"], load_in="4bit")
    assert receipts.check(tmp_path / "s", [corpus], None, plain) is not None  # nothing new for the same load
    assert receipts.check(tmp_path / "s", [corpus], None, four) is None  # a 4-bit load is not answered by it
    monkeypatch.setattr(loading, "bnb_config", lambda load_in, device, dtype: None)
    quant = ingest(tmp_path / "s", [corpus], cfg=four, **QUIET)
    assert quant.model_key == full.model_key + "-bnb4" and quant.n_captured == 8
    groups = Store.open(tmp_path / "s").groups()
    assert {g.model_key for g in groups} == {full.model_key, quant.model_key} and len(groups) == 2


@pytest.mark.skipif(not HAS_CUDA or importlib.util.find_spec("bitsandbytes") is None,
                    reason="needs a CUDA GPU and bitsandbytes (pip install -e '.[gpu]')")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_load_in_captures_on_a_gpu(tmp_path, bits):
    folder = make_model("llama", tmp_path / "m", d=64)  # 4-bit blocks need widths of 64
    corpus = write_corpus(tmp_path / "c.jsonl", 12)
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(model=str(folder), load_in=bits, poolings=["last"]), **QUIET)
    assert res.model_key.endswith("-bnb" + bits[0]) and res.n_captured == 12
    for rows, layers in store_contents(tmp_path / "s").values():
        assert len(rows) == 12 and all(np.isfinite(v).all() for v in layers.values())


def test_the_bitsandbytes_config_asks_for_nf4_in_the_compute_dtype(monkeypatch):
    fake = types.ModuleType("bitsandbytes")
    fake.supported_torch_devices = {"cpu", "cuda"}
    fake.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: fake.__spec__ if name == "bitsandbytes" else real(name, *a))
    four = quantisation.bnb_config("4bit", torch.device("cpu"), torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantisation.bnb_config("8bit", torch.device("cpu"), torch.bfloat16).load_in_8bit


# -- --dtype ------------------------------------------------------------------------------------
def own_hidden_states(lm: LoadedModel, ids: list[int]) -> list[torch.Tensor]:
    """Block outputs ``[T, d]`` (float32 copies of the model's own dtype) of one unpadded prompt,
    from ``output_hidden_states`` of the same load; the last block's from its own output (HF
    applies the final norm to the last hidden state)."""
    from traitlens.pipeline.model.sites import find_blocks

    last = []
    h = find_blocks(lm.model)[1][-1].register_forward_hook(lambda m, i, o: last.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        h.remove()
    states = [x[0] for x in out.hidden_states[1:]]
    states[-1] = last[0][0]
    assert all(s.dtype == lm.model.dtype for s in states)
    return [s.float() for s in states]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rows_equal_the_models_own_hidden_states_in_that_dtype(tmp_path, tiny_llama, tiny_gpt2, arch, dtype):
    folder = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    corpus = write_corpus(tmp_path / "c.jsonl", 24)
    lm = load_model(str(folder), device="cpu", dtype=dtype, log=lambda *a: None)
    f32 = load_model(str(folder), device="cpu", dtype="float32", log=lambda *a: None)
    assert lm.model.dtype == getattr(torch, dtype)
    if dtype == "bfloat16":  # the fingerprint rounds weights to bfloat16: a bfloat16 load is not another model
        assert lm.key == f32.key
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(poolings=["last", "mean"], batch_size=7), lm=lm, **QUIET)
    store = Store.open(tmp_path / "s")
    ids = {r.prompt_id: render_ids(lm.tokenizer, r.text, None, res.fmt == "chat") for r in read_corpus([corpus])[0]}
    own = {p: own_hidden_states(lm, i) for p, i in ids.items()}
    full = {p: own_hidden_states(f32, i) for p, i in ids.items()}

    def rel(got, states):
        want = (states[-1] if pooling == "last" else states.mean(0)).numpy()
        return float(np.linalg.norm(got - want) / np.linalg.norm(want))

    worst, off_f32 = 0.0, 0.0
    for pooling in ("last", "mean"):
        key = GroupKey(lm.key, res.fmt, "resid", pooling)
        rows = store.group_rows(key).to_pylist()
        assert len(rows) == 24
        for layer in range(lm.n_layers):
            stored = store.activations(key, layer)
            for r in rows:
                worst = max(worst, rel(stored[r["row"]], own[r["prompt_id"]][layer]))
                off_f32 = max(off_f32, rel(stored[r["row"]], full[r["prompt_id"]][layer]))
    assert worst <= 0.02, worst
    assert off_f32 > worst  # the rows are the low-precision model's, not a float32 one's


# -- GGUF files ---------------------------------------------------------------------------------
def test_a_gguf_file_gives_the_rows_of_the_checkpoint_it_was_written_from(tmp_path, tiny_llama):
    gguf_file = write_gguf(tiny_llama, tmp_path / "tiny.gguf")
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    r = run("--store", tmp_path / "from-gguf", "ingest", corpus, "--model", gguf_file, "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "model tiny-" in r.output  # named after the file
    ingest(tmp_path / "from-folder", [corpus], cfg=IngestConfig(model=str(tiny_llama), device="cpu"), **QUIET)
    assert_equal_stores(tmp_path / "from-folder", tmp_path / "from-gguf", rtol=2e-3, atol=2e-3)  # float16 storage


def test_a_quantised_gguf_file_loads_dequantised(tmp_path, tiny_llama):
    """Q8_0 blocks: the loaded weights are gguf's own dequantisation of the file's tensors, and
    the stored rows that model's own hidden states."""
    import gguf

    path = write_gguf(tiny_llama, tmp_path / "tiny-q8.gguf", qtype="Q8_0")
    lm = load_model(str(path), device="cpu", log=lambda *a: None)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    down = tensors["blk.1.ffn_down.weight"]
    assert down.tensor_type == gguf.GGMLQuantizationType.Q8_0
    weight = lm.model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_array_equal(weight, gguf.quants.dequantize(down.data, down.tensor_type).reshape(weight.shape))
    corpus = write_corpus(tmp_path / "c.jsonl", 10)
    res = ingest(tmp_path / "s", [corpus], cfg=IngestConfig(poolings=["last"]), lm=lm, **QUIET)
    store = Store.open(tmp_path / "s")
    records = {r.prompt_id: r for r in read_corpus([corpus])[0]}
    key = GroupKey(lm.key, res.fmt, "resid", "last")
    for layer in range(lm.n_layers):
        stored = store.activations(key, layer)
        for r in store.group_rows(key).to_pylist():
            want = own_hidden_states(lm, render_ids(lm.tokenizer, records[r["prompt_id"]].text, None, True))[layer][-1]
            np.testing.assert_allclose(stored[r["row"]], want.numpy(), rtol=2e-3, atol=2e-3)


def test_a_gguf_architecture_transformers_cannot_dequantise_exits_2_naming_it(tmp_path, tiny_llama):
    odd = write_gguf(tiny_llama, tmp_path / "odd.gguf", architecture="rwkv7")
    c = write_corpus(tmp_path / "c.jsonl", 4)
    r = run("--store", tmp_path / "s", "ingest", c, "--model", odd)
    assert r.exit_code == 2, r.output
    assert "architecture 'rwkv7'" in r.output and "dequantise" in r.output
    assert "llama" in r.output  # the ones it can
    r = run("--store", tmp_path / "s", "ingest", c, "--model", write_gguf(tiny_llama, tmp_path / "t.gguf"),
            "--load-in", "4bit")
    assert r.exit_code == 2 and "GGUF" in r.output
    assert not (tmp_path / "s").exists()


# -- GPUs ---------------------------------------------------------------------------------------
@needs_cuda
def test_cuda_capture_equals_cpu_capture(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    ingest(tmp_path / "cpu", [corpus], cfg=IngestConfig(model=str(tiny_llama), device="cpu", **CFG), **QUIET)
    ingest(tmp_path / "gpu", [corpus], cfg=IngestConfig(model=str(tiny_llama), device="cuda", dtype="float32", **CFG),
           **QUIET)
    assert_equal_stores(tmp_path / "cpu", tmp_path / "gpu", rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs to spread the blocks over")
def test_blocks_spread_over_two_gpus_give_the_rows_of_one(tmp_path):
    folder = make_model("llama", tmp_path / "m", n_layers=4, d=64)
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    ingest(tmp_path / "one", [corpus], cfg=IngestConfig(model=str(folder), device="cuda:0", dtype="float32", **CFG),
           **QUIET)
    size = sum(p.numel() * 4 for p in load_model(str(folder), device="cpu", log=lambda *a: None).model.parameters())
    spread = IngestConfig(model=str(folder), dtype="float32", max_memory=f"0={size // 2},1={size * 4}", **CFG)
    lm = load_model(str(folder), log=lambda *a: None, **spread.validate().load_kwargs())
    assert {str(d) for d in lm.model.hf_device_map.values()} >= {"0", "1"}
    ingest(tmp_path / "two", [corpus], cfg=spread, lm=lm, **QUIET)
    assert_equal_stores(tmp_path / "one", tmp_path / "two", rtol=2e-3, atol=2e-3)


def test_a_specs_capture_table_takes_the_same_options(tmp_path):
    from traitlens.workflows.spec import SpecError, load_spec

    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": 1}\n')
    head = 'store = "s"\n[[corpora]]\npaths = ["c.jsonl"]\n[capture]\n'
    spec = tmp_path / "spec.toml"
    spec.write_text(head + 'max_tokens = "auto"\ndtype = "bfloat16"\nmax_memory = {0 = "20GiB", cpu = "64GiB"}\n'
                           'load_in = "8bit"\n')
    cfg = load_spec(spec).ingest_config()
    assert (cfg.max_tokens, cfg.dtype, cfg.device_map, cfg.max_memory, cfg.load_in) == \
        ("auto", "bfloat16", "auto", {"0": "20GiB", "cpu": "64GiB"}, "8bit")
    spec.write_text(head + 'device_map = "everywhere"\n')
    with pytest.raises(SpecError, match="capture.device_map 'everywhere': use auto"):
        load_spec(spec)
