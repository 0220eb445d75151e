"""Capture at real model shapes: traitlens ingest beside the bare forward and a hand-written loop.

    python bench/bench_gpu.py                       # on the GPU: full shapes (see SHAPES), ~5 min on one H100
    python bench/bench_gpu.py --device cpu --quick  # the same table on CPU, 2 layers per model, <= 3 min

Random-weight models built from configs shaped like Llama-3.2-1B, Llama-3.1-8B and Qwen3-4B
(widths, heads, grouped KV heads, MLP and vocabulary as published; ``--layers N`` or ``--quick``
keep only the first N blocks: the table says so). One process, one model at a time, the same
batches for every case (length-sorted by ``length_batches``, as ingest cuts them):

- **bare forward**: the base model over the batch (every block, no hooks, no LM head: what
  capture cannot do without);
- **output_hidden_states loop**: ``model(**batch, output_hidden_states=True)``, last-token and
  mean pooling of every layer, ``.cpu().numpy()`` per layer, one ``np.save`` at the end: what a
  user writes by hand;
- **traitlens ingest**: every layer, ``last`` + ``mean`` pooling, committed to a new store (corpus
  scan, tokenising, Zarr + Parquet writes included).

Each case runs ``--rounds`` times round-robin after one warm-up; the table reports the fastest
time (tokens/s over real tokens, padding not counted), its ratio to the bare forward, peak device
memory (``torch.cuda.max_memory_allocated``, the weights included; "-" on CPU) and peak host
memory above the process's resident set at the case's start (``bench/peak_rss.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peak_rss import PeakRSS

from traitlens.pipeline.capture.batching import length_batches
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.model.encode import encode
from traitlens.pipeline.model.hooks import base_model, pad_batch, pad_token_id
from traitlens.pipeline.model.loading import LoadedModel
from traitlens.testing import make_tokenizer
from traitlens.testing.tiny_models import TRAIN_TEXT

# the published configs' shapes (hidden size, blocks, heads, KV heads, head dim, MLP, vocabulary)
SHAPES = {
    "Llama-3.2-1B": dict(arch="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0),
    "Llama-3.1-8B": dict(arch="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
                         tie_word_embeddings=False, rope_theta=500000.0),
    "Qwen3-4B": dict(arch="qwen3", hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=9728, vocab_size=151936,
                     tie_word_embeddings=True, rope_theta=1000000.0),
}
QUICK = dict(layers=2, vocab=32000, prompts=16, min_tokens=16, max_tokens=64, batch_size=8, rounds=2)
FULL = dict(layers=None, vocab=None, prompts=512, min_tokens=32, max_tokens=256, batch_size=64, rounds=2)


def build(name: str, device: torch.device, dtype: torch.dtype, layers: int | None, vocab: int | None):
    """A random-weight model of the shape ``name`` on ``device`` (initialised there, in ``dtype``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    if layers:
        shape["num_hidden_layers"] = min(layers, shape["num_hidden_layers"])
    if vocab:
        shape["vocab_size"] = vocab
    cfg = (LlamaConfig if arch == "llama" else Qwen3Config)(max_position_embeddings=4096, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def corpus(path: Path, n: int, lo: int, hi: int, tok, seed: int = 0) -> Path:
    """``n`` prompts of roughly ``lo``..``hi`` tokens (words of the test tokenizer's own text)."""
    rng = random.Random(seed)
    words = " ".join(TRAIN_TEXT[:5]).split()
    rows = []
    for i in range(n):
        target, text = rng.randint(lo, hi), f"#{i}"
        while len(tok(text)["input_ids"]) < target - 12:  # the chat template adds ~12 tokens
            text += " " + " ".join(rng.choice(words) for _ in range(8))
        rows.append({"text": text, "label": "pos" if i % 2 else "neg", "trait": "bench"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bare_forward(lm, batches, pad) -> None:
    base = base_model(lm)
    for seqs in batches:
        ids, mask = pad_batch(seqs, pad, "right", lm.device)
        base(input_ids=ids, attention_mask=mask.long(), use_cache=False)


@torch.inference_mode()
def hidden_states_loop(lm, batches, pad, out: Path) -> None:
    """What a user writes: output_hidden_states, pool each layer, numpy, save."""
    kept = []
    for seqs in batches:
        ids, mask = pad_batch(seqs, pad, "right", lm.device)
        hs = lm.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True, use_cache=False).hidden_states
        rows, last, m = torch.arange(len(seqs), device=lm.device), mask.sum(1) - 1, mask.unsqueeze(-1)
        kept.append([(h[rows, last].float().cpu().numpy(),
                      ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()) for h in hs[1:]])
    np.save(out / "acts.npy", np.stack([np.concatenate([b[l][k] for b in kept]) for l in range(len(kept[0]))
                                        for k in (0, 1)]).astype(np.float16))


def timed(fn, device: torch.device) -> tuple[float, int | None, int | None]:
    """(seconds, peak device bytes, peak extra host bytes) of one call."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as host:
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        secs = time.perf_counter() - t
    return secs, (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None), host.extra


def bench_model(name: str, args, plan: dict, device: torch.device, dtype: torch.dtype, tmp: Path) -> list[tuple]:
    tok = make_tokenizer(chat=True)
    t0 = time.perf_counter()
    model = build(name, device, dtype, plan["layers"], plan["vocab"])
    lm = LoadedModel(model=model, tokenizer=tok, name=name, key=f"bench-{name}", device=device, path=name)
    built = time.perf_counter() - t0
    path = corpus(tmp / f"{name}.jsonl", plan["prompts"], plan["min_tokens"], plan["max_tokens"], tok)
    records, _ = read_corpus([path])
    enc = [encode(tok, r, True, 4096) for r in records]
    cut = length_batches([len(e.ids) for e in enc], plan["batch_size"], args.max_tokens)
    batches = [[enc[i].ids for i in b] for b in cut]
    n_tok = sum(len(e.ids) for e in enc)
    pad = pad_token_id(tok)
    cfg = IngestConfig(layers="all", poolings=["last", "mean"], batch_size=plan["batch_size"],
                       max_tokens=args.max_tokens, window=max(4096, plan["prompts"]))

    warm = tmp / f"{name}-warm.jsonl"  # the first batch's prompts: a warm-up that costs one batch
    warm.write_text("".join(line + "\n" for line in path.read_text().splitlines()[: plan["batch_size"]]))

    def run_ingest(corpus_path=path, n=len(records)):  # noqa: B008  (bound once, here)
        store = tmp / f"store-{time.time_ns()}"
        res = ingest(store, [corpus_path], cfg=cfg, lm=lm, progress=False, log=lambda *a: None)
        assert res.n_captured == n, res
        shutil.rmtree(store, ignore_errors=True)

    def run_loop(some=batches):
        out = Path(tempfile.mkdtemp(dir=tmp))
        hidden_states_loop(lm, some, pad, out)
        shutil.rmtree(out, ignore_errors=True)

    cases = [("bare forward (base model, no hooks, no LM head)", lambda: bare_forward(lm, batches, pad)),
             ("output_hidden_states loop + pool + np.save", run_loop),
             ("traitlens ingest, all layers, last+mean", run_ingest)]
    # warm-up on one batch each: kernels chosen, the allocator and the libraries' caches filled
    bare_forward(lm, batches[:1], pad)
    run_loop(batches[:1])
    run_ingest(warm, min(plan["batch_size"], len(records)))
    best: dict[str, tuple] = {}
    for _ in range(plan["rounds"]):
        for case, fn in cases:
            secs, dev_peak, host_peak = timed(fn, device)
            old = best.get(case)
            best[case] = (secs, dev_peak, host_peak) if old is None else (
                min(old[0], secs), max(old[1] or 0, dev_peak or 0) or None, max(old[2] or 0, host_peak or 0) or None)
    cfgm = model.config
    shape = (f"{cfgm.num_hidden_layers} of {SHAPES[name]['num_hidden_layers']} layers, d {cfgm.hidden_size}, "
             f"vocab {cfgm.vocab_size}")
    base = best[cases[0][0]][0]
    rows = [(name, shape, case, n_tok / best[case][0], base / best[case][0], best[case][1], best[case][2])
            for case, _ in cases]
    print(f"  {name}: built in {built:.1f} s ({shape}); {len(records)} prompts, {n_tok} tokens, "
          f"{len(batches)} batches", flush=True)
    lm = model = None  # (the closures above hold lm: release it for the next model)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--quick", action="store_true", help="2 layers per model, a 32k vocabulary, 16 short prompts, 2 rounds")
    ap.add_argument("--models", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N blocks of each model")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per batch, every case")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU; use --device cpu --quick")
    plan = dict(QUICK if args.quick else FULL)
    for k in ("layers", "prompts", "rounds"):
        if getattr(args, k) is not None:
            plan[k] = getattr(args, k)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-gpu-"))
    t0 = time.perf_counter()
    rows = []
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows += bench_model(name, args, plan, device, dtype, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    print(f"\n{time.strftime('%Y-%m-%d')} · commit {commit or '?'} · {where} · {dtype} · batch {plan['batch_size']}, "
          f"max {args.max_tokens} padded tokens · best of {plan['rounds']} round(s) after a warm-up · "
          f"{time.perf_counter() - t0:.0f} s in all")
    print("| model (shape) | case | tokens/s | x bare forward | peak device memory | peak extra host RSS |")
    print("|---|---|---:|---:|---:|---:|")
    for name, shape, case, tps, ratio, dev_peak, host_peak in rows:
        print(f"| {name} ({shape}) | {case} | {tps:,.0f} | {ratio:.2f} | {mib(dev_peak)} | {mib(host_peak)} |")


if __name__ == "__main__":
    main()
