"""Capture throughput and memory: `traitlens ingest` beside the loops a user would otherwise write.

Same prompts, same loaded model, one process, measured side by side; prints prompts/s,
tokens/s, the ratio to a plain full-model forward loop, and each case's peak memory above the
process's resident set at its start (``bench/peak_rss.py``). Ratios, not seconds, are what carry
over between machines. When TransformerLens is installed, its ``TransformerBridge.run_with_cache``
(every hook, and with a names filter for the residual stream only) runs on the same batches,
pooled and saved the same way.

    python bench/bench_capture.py [--n 256] [--batch-size 32] [--model PATH]

Prompts: persona statements from ../shared/data when present, else the project's demo corpus,
rendered with the chat template like ingest does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peak_rss import PeakRSS

from traitlens.pipeline.capture.corpus import ReadOptions
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.model.encode import encode
from traitlens.pipeline.model.hooks import pad_token_id
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.model.loading import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "persona"


def corpus_file(n: int, tmp: Path) -> Path:
    out = tmp / "bench.jsonl"
    rows = []
    if SHARED.exists():
        for f in sorted(SHARED.glob("*.jsonl")):
            for line in f.read_text().splitlines()[: n // 6 + 1]:
                o = json.loads(line)
                rows.append({"text": o["statement"], "label": o["answer_matching_behavior"], "trait": f.stem})
    else:
        from traitlens.workflows.demo_corpus import demo_records

        rows = [{"text": r["text"], "label": r["label"], "trait": r["trait"]} for r in demo_records()]
    out.write_text("\n".join(json.dumps(r) for r in rows[:n]) + "\n")
    return out


def padded(seqs, pad_id):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def plain_loop(lm, seqs, bs, sort=False, hidden=False):
    """model(**batch) over batches in corpus order (or sorted by length); with ``hidden``, also
    output_hidden_states=True, last-token pooling of every layer and np.save, as users do."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort else list(range(len(seqs)))
    pad = pad_token_id(lm.tokenizer)
    kept = []
    with torch.inference_mode():
        for b in range(0, len(order), bs):
            chunk = [seqs[i] for i in order[b:b + bs]]
            ids, mask = padded(chunk, pad)
            out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
            if hidden:
                last = mask.sum(1) - 1
                kept.append(np.stack([h[torch.arange(len(chunk)), last].float().numpy() for h in out.hidden_states[1:]], 1))
    if hidden:
        with tempfile.TemporaryDirectory() as d:
            np.save(Path(d) / "acts.npy", np.concatenate(kept).astype(np.float16))


def tl_loop(bridge, seqs, bs, pad_id, names_filter=None):
    """TransformerLens: run_with_cache per batch, last-token pooling of every block's
    resid_post, np.save — what a TransformerLens user writes for the same job."""
    kept = []
    with torch.inference_mode():
        for b in range(0, len(seqs), bs):
            chunk = seqs[b:b + bs]
            ids, mask = padded(chunk, pad_id)
            _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=names_filter)
            last = mask.sum(1) - 1
            rows = torch.arange(len(chunk))
            kept.append(np.stack([cache[f"blocks.{l}.hook_resid_post"][rows, last].float().numpy()
                                  for l in range(bridge.cfg.n_layers)], 1))
            del cache
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "acts.npy", np.concatenate(kept).astype(np.float16))


def transformer_lens_cases(lm, seqs, bs):
    """The TransformerLens cases, or none when it is not installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        print("TransformerLens not installed: its rows are skipped (pip install transformer-lens)")
        return []
    bridge = TransformerBridge.boot_transformers(str(lm.path), tokenizer=lm.tokenizer, dtype=torch.float32)
    pad = pad_token_id(lm.tokenizer)
    # its activations must be ours before its speed means anything
    ids = torch.tensor([seqs[0]])
    _, cache = bridge.run_with_cache(ids)
    with torch.inference_mode():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    err = float((cache["blocks.3.hook_resid_post"] - hs[4]).abs().max())
    print(f"TransformerLens bridge: blocks.3.hook_resid_post vs hidden_states[4]: max |diff| {err:.2e}")
    resid = lambda name: name.endswith("hook_resid_post")  # noqa: E731
    return [("TransformerLens run_with_cache, every hook", lambda: tl_loop(bridge, seqs, bs, pad)),
            ("TransformerLens run_with_cache, resid_post filter", lambda: tl_loop(bridge, seqs, bs, pad, resid))]


def forward_flops(lm, seqs, n_blocks: int, lm_head: bool) -> float:
    """Forward FLOPs over the real tokens (padding left out), counted from the config: two per
    multiply-add in every block's linear layers, plus attention's scores and mixing over each
    token's causal prefix (2 L^2 d_attn per block for a sequence of L tokens); the LM head
    (2 d vocab per token) when the case runs it."""
    cfg = lm.model.config
    d = lm.d_model
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    gated = cfg.model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
    attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    mlp = (3 if gated else 2) * d * d_ff
    lengths = np.array([len(s) for s in seqs], dtype=np.float64)
    total = n_blocks * (2.0 * (attn + mlp) * lengths.sum() + 2.0 * heads * head_dim * (lengths ** 2).sum())
    if lm_head:
        total += 2.0 * d * cfg.vocab_size * lengths.sum()
    return total


def matmul_flops_per_s(d: int, d_ff: int, rounds: int = 20) -> float:
    """Dense float32 matmul FLOP/s this machine reaches with torch at its current thread count,
    on a block-sized product ([4096, d] x [d, d_ff], the shape of an MLP projection)."""
    a, b = torch.randn(4096, d), torch.randn(d, d_ff)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(rounds):
        a @ b
    return rounds * 2.0 * 4096 * d * d_ff / (time.perf_counter() - t)


def timed(fn):
    """(seconds, peak extra bytes) of one call."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        fn()
        secs = time.perf_counter() - t
    return secs, mem.extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=2,
                    help="run every case this many times, round-robin; report the fastest time and the largest memory")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model, device="cpu", dtype="float32")
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-"))
    try:
        cpath = corpus_file(args.n, tmp)
        records, _ = read_corpus([cpath], ReadOptions())
        seqs = [encode(lm.tokenizer, r, True, lm.max_length).ids for r in records]
        n_tok = sum(len(s) for s in seqs)
        bs = args.batch_size
        plain_loop(lm, seqs[: bs * 2], bs)  # warm-up

        def run_ingest(layers, poolings=("last", "mean")):
            cfg = IngestConfig(layers=layers, poolings=list(poolings), batch_size=bs)

            def go():  # a new store every call: a second round must capture, not skip
                res = ingest(tmp / f"store-{time.time_ns()}", [cpath], cfg=cfg, lm=lm, progress=False,
                             log=lambda *a: None)
                assert res.n_captured > 0 and res.n_skipped == 0, res
            return go

        cases = [
            ("plain model(**batch) loop, corpus order", lambda: plain_loop(lm, seqs, bs)),
            ("plain loop, length-sorted batches", lambda: plain_loop(lm, seqs, bs, sort=True)),
            ("output_hidden_states=True + pool + np.save", lambda: plain_loop(lm, seqs, bs, hidden=True)),
            (f"traitlens ingest, all {lm.n_layers} layers, last+mean", run_ingest("all")),
            ("traitlens ingest, layers 0-14, last+mean", run_ingest("0-14")),
            ("traitlens ingest, layer 6 only, last", run_ingest("6", ("last",))),
        ] + transformer_lens_cases(lm, seqs, bs)
        # useful forward FLOPs of each case: the blocks it runs (ingest stops after the deepest
        # hooked one and never runs the LM head; the plain loops and TransformerLens run both)
        full = forward_flops(lm, seqs, lm.n_layers, lm_head=True)
        flops = {name: full for name, _ in cases}
        flops[f"traitlens ingest, all {lm.n_layers} layers, last+mean"] = forward_flops(lm, seqs, lm.n_layers, False)
        flops["traitlens ingest, layers 0-14, last+mean"] = forward_flops(lm, seqs, 15, False)
        flops["traitlens ingest, layer 6 only, last"] = forward_flops(lm, seqs, 7, False)
        cfg = lm.model.config
        peak = matmul_flops_per_s(lm.d_model, getattr(cfg, "intermediate_size", None) or 4 * lm.d_model)
        best: dict[str, tuple[float, int | None]] = {}
        for _ in range(args.rounds):  # round-robin, so a slow spell of the machine hits every case alike
            for name, fn in cases:
                secs, extra = timed(fn)
                old = best.get(name)
                best[name] = (secs, extra) if old is None else (min(old[0], secs), max(old[1] or 0, extra or 0))
        results = [(name, *best[name]) for name, _ in cases]
        base = results[0][1]
        print(f"\n{len(seqs)} prompts, {n_tok} tokens ({n_tok / len(seqs):.1f}/prompt), batch {bs}, "
              f"{lm.name} on {lm.device}, {torch.get_num_threads()} threads, best of {args.rounds} rounds")
        print(f"dense float32 matmul on this machine, same threads: {peak / 1e9:.1f} GFLOP/s")
        print(f"| {'case':<50} | prompts/s | tokens/s | x plain forward | GFLOP/s | x matmul | peak extra RSS |")
        print(f"|{'-' * 52}|-----------|----------|-----------------|---------|----------|----------------|")
        for name, secs, extra in results:
            mem = "n/a" if extra is None else f"{extra / 2**20:.0f} MiB"
            rate = flops[name] / secs
            print(f"| {name:<50} | {len(seqs) / secs:9.1f} | {n_tok / secs:8.0f} | {base / secs:15.2f} | "
                  f"{rate / 1e9:7.1f} | {rate / peak:8.2f} | {mem:>14} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
