"""Steering evaluation, batched (as `traitlens evaluate` runs it) against one prompt at a time.

    python bench/steering_eval_speed.py [--store persona.store --trait agreeableness] [--n 40]

The same work both ways, on the default model: one setting (a vector at one layer, one alpha)
measured on ``n`` persona statements (Yes-No log-odds unsteered, under +v and -v), the KL on
the 32 neutral prompts, and their greedy replies (24 tokens) with perplexity and distinct-2.
Batched: left-padded batches with a KV cache (the evaluator's defaults); one at a time: every
call with one prompt. Prints samples per second each way, their ratio (side by side in one
process, alternating order), and the largest difference between the two ways' numbers.
Without ``--store`` it measures a random unit vector at layer 16 on the project's own neutral
prompts read as statements.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from traitlens.pipeline.model.generation import greedy_replies
from traitlens.pipeline.model.loading import load_model
from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS, distinct_n, next_token_kl, reply_perplexity
from traitlens.pipeline.steer.evaluate import Evaluator, yes_no_logodds
from traitlens.pipeline.steer.steering import steering

REPLY_TOKENS = 24


def one_at_a_time(lm, vector, layer, alpha, scale, texts, neutral) -> dict:
    """The evaluator's numbers for one setting, every model call on a single prompt."""
    one = lambda f, xs: np.array([f([x])[0] for x in xs])  # noqa: E731
    base = one(lambda s: yes_no_logodds(lm, s), texts)
    with steering(lm, vector, layer, alpha, scale):
        plus = one(lambda s: yes_no_logodds(lm, s), texts)
    with steering(lm, vector, layer, -alpha, scale):
        minus = one(lambda s: yes_no_logodds(lm, s), texts)
    kl = next_token_kl(lm, vector, layer, [alpha], scale, neutral, batch_size=1)[alpha]
    with steering(lm, vector, layer, alpha, scale):
        replies = greedy_replies(lm, neutral, REPLY_TOKENS, batch_size=1)
    ppl = reply_perplexity(lm, neutral, replies, batch_size=1)
    return {"shift": float((plus - minus).mean()), "base": float(base.mean()), "kl": float(kl.mean()),
            "perplexity": float(np.nanmedian(ppl)), "distinct2": float(np.nanmean([distinct_n(r) for r in replies]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None)
    ap.add_argument("--trait", default="agreeableness")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--layer", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    lm = load_model(None)
    neutral = list(NEUTRAL_PROMPTS)
    if args.store:
        from traitlens.queries import StoreSQL
        from traitlens.queries.selection import best_vector, held_out_texts
        from traitlens.store import Store

        store = Store.open(args.store)
        with StoreSQL(store) as q:
            vec = best_vector(q, args.trait, layer=args.layer, method="mean_diff")
        vector, texts = np.asarray(vec["vector"]), held_out_texts(store, args.trait, 1, vec["held_split"], args.n)
    else:
        vector = np.random.default_rng(0).standard_normal(lm.d_model)
        texts = (neutral * (args.n // len(neutral) + 1))[:args.n]
    n_samples = len(texts) + len(neutral)
    times = {"batched": [], "one at a time": []}
    got = {}
    for k in range(args.rounds):
        for way in (("batched", "one at a time") if k % 2 == 0 else ("one at a time", "batched")):
            t0 = time.perf_counter()
            if way == "batched":
                ev = Evaluator(lm, "persona", texts, neutral=neutral, reply_tokens=REPLY_TOKENS)
                r = ev.at(vector, args.layer, [args.alpha])[0]
                got[way] = {"shift": r["shift"], "base": r["unsteered"], "kl": r["kl"], "perplexity": r["perplexity"],
                            "distinct2": r["distinct2"]}
                scale = ev.scale(args.layer)
            else:
                scale = Evaluator(lm, "persona", texts, neutral=neutral, reply_tokens=0).scale(args.layer)
                got[way] = one_at_a_time(lm, vector, args.layer, args.alpha, scale, texts, neutral)
            times[way].append(time.perf_counter() - t0)
            print(f"round {k + 1} {way}: {times[way][-1]:.1f} s", flush=True)
    best = {w: min(t) for w, t in times.items()}
    print(f"\n{n_samples} samples ({len(texts)} statements + {len(neutral)} neutral prompts), layer {args.layer}, "
          f"alpha {args.alpha}, {REPLY_TOKENS}-token replies")
    for w, t in best.items():
        print(f"  {w:<14} {n_samples / t:6.2f} samples/s  ({t:.1f} s, best of {args.rounds})")
    print(f"  batched / one at a time: {best['one at a time'] / best['batched']:.2f}x")
    print("  numbers, batched vs one at a time: " + ", ".join(
        f"{k} {got['batched'][k]:.4f} vs {got['one at a time'][k]:.4f}" for k in got["batched"]))


if __name__ == "__main__":
    main()
