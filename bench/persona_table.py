"""Best layer and held-out AUROC per persona trait and method, on the default model.

    python bench/persona_table.py --store persona.store [--n-boot 8]

Ingests ../shared/data/persona/*.jsonl into the store first if it is not there yet (about
8 minutes on 2 CPU cores), extracts all six methods at all 30 layers for each trait, and
prints a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from traitlens.pipeline.extract import ExtractConfig, extract
from traitlens.pipeline.ingest import ingest
from traitlens.store import Store

PERSONA = Path(__file__).resolve().parents[2] / "shared" / "data" / "persona"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="persona.store")
    ap.add_argument("--n-boot", type=int, default=8)
    args = ap.parse_args()
    files = sorted(PERSONA.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no persona data at {PERSONA}")
    if not (Path(args.store) / "store.json").exists() or not Store.open(args.store).groups():
        ingest(args.store, files)
    methods = ["mean_diff", "pca_diff", "ica", "probe", "gradient", "random"]
    rows = []
    t0 = time.perf_counter()
    for f in files:
        res = extract(args.store, f.stem, cfg=ExtractConfig(n_boot=args.n_boot))
        best = {}
        for r in res.records:
            if r["method"] not in best or r["auroc"] > best[r["method"]]["auroc"]:
                best[r["method"]] = r
        rows.append((f.stem, best, res.records[0]["n_held_pos"] + res.records[0]["n_held_neg"], res.seconds))
    print(f"\n| trait | held-out n | " + " | ".join(methods) + " | extract s |")
    print("|---|---|" + "---|" * len(methods) + "---|")
    for trait, best, n_held, secs in rows:
        cells = [f"L{best[m]['layer']} {best[m]['auroc']:.3f}" for m in methods]
        print(f"| {trait} | {n_held} | " + " | ".join(cells) + f" | {secs:.0f} |")
    print(f"\ncells: best layer and its held-out (val) AUROC; stability of the best probe vectors: "
          + ", ".join(f"{t} {b['probe']['stability']:.2f}" for t, b, _, _ in rows))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
