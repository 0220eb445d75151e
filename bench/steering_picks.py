"""Detection pick against steering pick, per trait, on the default model (docs/benchmarks.md's table).

    python bench/steering_picks.py --store persona.store [--store refusal.store] [--trials 20]

For every trait with vectors in each store (persona traits: kind persona; refusal: kind
refusal) it runs the steering sweep `traitlens evaluate --steering --methods all --layers all`
runs (Optuna over method x layer x alpha, the random floor at the front and the pick) on the
held-out split the vectors were ranked on, then re-measures the pick and the random direction
at the pick's setting on the *test* split where the store has one: the sweep chose on the
held-out split, so its own number there is optimistic; the test split saw no choice.

Prints a Markdown table: the detection pick (method, layer), the steering pick (method, layer,
alpha), its shift with 95% interval and KL on the choice split and on test, random's interval
at the same setting, and Spearman's rank correlation of held-out Cohen's d against the best
shift within the budget across the measured cells. The sweeps' rows are stored in each store's
steering tables (SQL: `SELECT * FROM steering`).
"""

from __future__ import annotations

import argparse
import time

from traitlens.pipeline.model.loading import load_model
from traitlens.pipeline.steer.evaluate import Evaluator
from traitlens.pipeline.steer.rule import floor_at
from traitlens.pipeline.steer.search import evaluator_for, stored_methods, sweep
from traitlens.pipeline.steer.settings import SweepConfig
from traitlens.queries import StoreSQL
from traitlens.queries.budget import KL_BUDGET
from traitlens.queries.selection import held_out_texts
from traitlens.store import Store
from traitlens.store.store import new_run_id


def fmt(r: dict | None) -> str:
    return "-" if r is None else f"{r['shift']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", action="append", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--alphas", default="0.05,0.1,0.2,0.4")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--reply-tokens", type=int, default=0)
    ap.add_argument("--traits", default=None, help="comma list [default: every trait in each store]")
    args = ap.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    lm = load_model(None)
    lines = ["| trait | detection pick | steering pick | shift, choice split | KL | shift, test split | random, test "
             "| Spearman (cells) |", "|---|---|---|---|---|---|---|---|"]
    for path in args.store:
        store = Store.open(path)
        with StoreSQL(store) as q:
            traits = [r["trait"] for r in q.query("SELECT DISTINCT trait FROM metrics ORDER BY 1").to_pylist()]
            methods = {t: stored_methods(q, t, lm.key) for t in traits}
        for trait in traits if args.traits is None else [t for t in traits if t in args.traits.split(",")]:
            t0 = time.perf_counter()
            kind = "refusal" if trait == "refusal" else "persona"
            cfg = SweepConfig(kind=kind, methods=methods[trait], layers="all", alphas=alphas, n=args.n,
                              reply_tokens=args.reply_tokens, kl_budget=KL_BUDGET, trials=args.trials)
            ev, what = evaluator_for(store, lm, trait, cfg)
            res = sweep(store, trait, ev, cfg, progress=False)
            res.save(store, new_run_id("bench-steering"))
            rho, cells = res.correlation()
            p, d = res.pick, res.detection_pick
            test_row = test_floor = None
            want = 1 if kind == "persona" else -1
            test = held_out_texts(store, trait, want, "test", args.n)
            if p is not None and test:  # the pick re-measured where no choice was made
                tev = Evaluator(lm, kind, test, reply_tokens=0)
                test_row = tev.at(res.vectors[(p["method"], p["layer"])]["vector"], p["layer"], [p["alpha"]])[0]
                if ("random", p["layer"]) in res.vectors:
                    test_floor = tev.at(res.vectors[("random", p["layer"])]["vector"], p["layer"], [p["alpha"]])[0]
            floor = floor_at(res.rows, p) if p else None
            pick = f"{p['method']} L{p['layer']} a{p['alpha']:g}" if p else "none within budget"
            lines.append(f"| {trait} | {d['method']} L{d['layer']} | {pick} | {fmt(p)} (random {fmt(floor)}) | "
                         f"{p['kl']:.3f} | {fmt(test_row)} | {fmt(test_floor)} | {rho:+.2f} ({cells}) |"
                         if p else f"| {trait} | {d['method']} L{d['layer']} | {pick} | - | - | - | - | "
                         f"{rho:+.2f} ({cells}) |")
            print(f"{trait}: {what}; {res.search}; {time.perf_counter() - t0:.0f} s", flush=True)
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
