"""Refusal steering on the default model: a sweep over layer, alpha and steered positions.

Needs a store with the refusal trait extracted from ../shared/data/refusal (see
``workflows/examples/shared-data.toml``, or ``traitlens ingest`` the two JSON files as the
README shows, then ``traitlens extract --trait refusal --methods mean_diff``). For each
(layer, alpha, positions) on held-out harmless requests it prints three measures:

- ``P(open)``: teacher-forced probability that the reply opens with a refusal phrase
  (``pipeline/evaluate.refusal_probability``, what ``traitlens evaluate --steering`` stores);
- ``P(tok1)``: probability that the first reply token is the first token of a refusal phrase;
- ``gen``: fraction of greedy replies (``--tokens`` long) containing a refusal phrase
  (``evaluate.REFUSAL_MARKERS``, the list ``--kind refusal_rate`` reads), with
  ``ok`` the fraction whose words are mostly real words (a crude derailment check).

The unsteered model's own rates on held-out *harmful* requests come first, as the ceiling a
refusal direction can be compared against.

    python bench/refusal_sweep.py --store /path/to/refusal.store [--layers 6,8,10,12] [--alphas 0.1,0.25,0.5]
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
from traitlens.pipeline.model.encode import render_ids
from traitlens.pipeline.steer.evaluate import is_refusal, refusal_first_token_probability, refusal_probability
from traitlens.pipeline.model.loading import load_model
from traitlens.pipeline.steer.steering import mean_token_norm, steering
from traitlens.store import Store

WORD = re.compile(r"[A-Za-z']+")


def looks_ok(text: str, vocab: set[str]) -> bool:
    """A crude derailment check: most words are whole-word tokens of the tokenizer (which misses
    some common words, hence 0.6) and no word makes up over a third of the reply."""
    words = WORD.findall(text.lower())
    if not words:
        return False
    known = sum(w in vocab for w in words) / len(words)
    top = max(words.count(w) for w in set(words)) / len(words)
    return known >= 0.6 and (top <= 1 / 3 or len(words) < 6)


@torch.inference_mode()
def greedy(lm, seqs: list[list[int]], n_tokens: int, batch: int = 20) -> list[str]:
    """Batched greedy continuations (left padding): ``[n]`` decoded strings."""
    tok = lm.tokenizer
    pad = pad_token_id(tok)
    out = []
    for b in range(0, len(seqs), batch):
        ids, mask = pad_batch(seqs[b:b + batch], pad, "left", lm.device)
        gen = lm.model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=n_tokens, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        out += tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--trait", default="refusal")
    ap.add_argument("--method", default="mean_diff")
    ap.add_argument("--layers", default="6,8,10,12,14")
    ap.add_argument("--alphas", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--positions", default="all,generated")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    t0 = time.perf_counter()
    store = Store.open(args.store)
    lm = load_model(None, log=lambda *a: None)
    vecs = {}
    for r in sorted(store.table("vectors").to_pylist(), key=lambda r: r["created_at"]):
        if r["trait"] == args.trait and r["method"] == args.method and r["pooling"] == "last" and r["fmt"] == "chat":
            vecs[r["layer"]] = r
    prompts = store.prompts().to_pylist()
    held = lambda label: [p["text"] for p in prompts if p["trait"] == args.trait and p["label"] == label  # noqa: E731
                          and p["split"] != "train"][: args.n]
    harmless, harmful = held(-1), held(1)
    vocab = {w.lower().strip("Ġ▁ ") for w in lm.tokenizer.get_vocab() if w.strip("Ġ▁ ").isalpha()}
    enc = lambda texts: [render_ids(lm.tokenizer, t, None, True) for t in texts]  # noqa: E731
    s_harmless, s_harmful = enc(harmless), enc(harmful)

    def measure(texts, seqs, tf=True):
        gen = greedy(lm, seqs, args.tokens)
        return {"P(open)": float(np.mean(refusal_probability(lm, texts))) if tf else float("nan"),
                "P(tok1)": float(np.mean(refusal_first_token_probability(lm, texts))) if tf else float("nan"),
                "gen": float(np.mean([is_refusal(g) for g in gen])),
                "ok": float(np.mean([looks_ok(g, vocab) for g in gen])), "example": gen[0]}

    print(f"{len(harmless)} held-out harmless and {len(harmful)} harmful requests; greedy replies of {args.tokens} tokens")
    for name, texts, seqs in (("harmful, unsteered", harmful, s_harmful), ("harmless, unsteered", harmless, s_harmless)):
        m = measure(texts, seqs)
        print(f"{name:<22} P(open) {m['P(open)']:.3f}  P(tok1) {m['P(tok1)']:.3f}  gen {m['gen']:.3f}  ok {m['ok']:.2f}"
              f"  e.g. {m['example'][:70]!r}")
    ids, mask = pad_batch(s_harmless, pad_token_id(lm.tokenizer), "left", lm.device)
    print("\n| layer | alpha | positions | scale | P(open) | P(tok1) | gen refusal | gen ok | example |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in [int(x) for x in args.layers.split(",")]:
        if layer not in vecs:
            print(f"| {layer} | no {args.method} vector stored for this layer |")
            continue
        scale = mean_token_norm(lm, layer, ids.cpu(), mask.long().cpu())
        for alpha in [float(a) for a in args.alphas.split(",")]:
            for pos in args.positions.split(","):
                with steering(lm, vecs[layer]["vector"], layer, alpha, scale, positions=pos):
                    m = measure(harmless, s_harmless, tf=pos == "all")  # teacher forcing has no generated positions
                ex = m["example"][:60].replace("|", "/").replace("\n", " ")
                print(f"| {layer} | {alpha:g} | {pos} | {scale:.1f} | {m['P(open)']:.3f} | {m['P(tok1)']:.3f} | "
                      f"{m['gen']:.3f} | {m['ok']:.2f} | {ex!r} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
