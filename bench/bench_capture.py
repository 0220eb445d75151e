"""Capture throughput: `traitlens ingest` beside the loops a user would otherwise write.

Same prompts, same loaded model, one process, measured side by side; prints prompts/s,
tokens/s and the ratio to a plain full-model forward loop. Ratios, not seconds, are what
carry over between machines.

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

from traitlens.pipeline.corpus import ReadOptions, read_corpus
from traitlens.pipeline.encode import encode
from traitlens.pipeline.ingest import IngestConfig, ingest
from traitlens.pipeline.models import load_model

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
    pad = lm.tokenizer.pad_token_id or 0
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


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None)
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
            store = tmp / f"store-{time.time_ns()}"
            cfg = IngestConfig(layers=layers, poolings=list(poolings), batch_size=bs)
            return lambda: ingest(store, [cpath], cfg=cfg, lm=lm, progress=False, log=lambda *a: None)

        cases = [
            ("plain model(**batch) loop, corpus order", lambda: plain_loop(lm, seqs, bs)),
            ("plain loop, length-sorted batches", lambda: plain_loop(lm, seqs, bs, sort=True)),
            ("output_hidden_states=True + pool + np.save", lambda: plain_loop(lm, seqs, bs, hidden=True)),
            (f"traitlens ingest, all {lm.n_layers} layers, last+mean", run_ingest("all")),
            ("traitlens ingest, layers 0-14, last+mean", run_ingest("0-14")),
            ("traitlens ingest, layer 6 only, last", run_ingest("6", ("last",))),
        ]
        results = []
        for name, fn in cases:
            secs = timed(fn)
            results.append((name, secs))
        base = results[0][1]
        print(f"\n{len(seqs)} prompts, {n_tok} tokens ({n_tok / len(seqs):.1f}/prompt), batch {bs}, "
              f"{lm.name} on {lm.device}, {torch.get_num_threads()} threads")
        print(f"| {'case':<48} | prompts/s | tokens/s | x plain forward |")
        print(f"|{'-' * 50}|-----------|----------|-----------------|")
        for name, secs in results:
            print(f"| {name:<48} | {len(seqs) / secs:9.1f} | {n_tok / secs:8.0f} | {base / secs:15.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
