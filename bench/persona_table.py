"""Best layer and held-out AUROC per persona trait and method, on the default model.

    python bench/persona_table.py --store persona.store [--n-boot 8]

Ingests ../shared/data/persona/*.jsonl into the store first if it is not there yet (about
8 minutes on 2 CPU cores), extracts all six methods at all 30 layers for each trait, and
prints two Markdown tables (both in docs/benchmarks.md): per method, the layer the selection rule picks
on val with its val / test AUROC; and the one vector `rank` picks (every method and layer,
`traitlens.queries.selection`'s rule on val) beside a plain pipeline — a scikit-learn
LogisticRegression per layer on the raw train rows, its layer chosen by val AUROC — both scored
on the test split, which no choice saw.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from traitlens.pipeline.extract.contrastive import contrastive_set
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.fitting import read_rows
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.capture.ingest import ingest
from traitlens.pipeline.extract.metrics import auroc
from traitlens.queries import StoreSQL
from traitlens.queries.selection import best_per_method, best_vector
from traitlens.store import Store
from traitlens.store.vocabulary import METHOD_NAMES

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
    methods = list(METHOD_NAMES)
    store = Store.open(args.store)
    rows, versus = [], []
    t0 = time.perf_counter()
    for f in files:
        res = extract(args.store, f.stem, cfg=ExtractConfig(n_boot=args.n_boot))
        best = best_per_method(res.records)  # per method, the layer the selection rule picks on val
        # the layer was chosen on val, so val AUROC is optimistic: score it again on test
        test = contrastive_set(store, res.key, f.stem, held_split="test")
        arr = store.zarr_root()[res.key.path]
        for m, r in best.items():
            X = read_rows(arr[f"L{r['layer']}"], test.held_rows)
            r["test_auroc"] = auroc(X @ np.asarray(r["vector"], np.float64), test.held_pos)
        rows.append((f.stem, best, res.records[0]["n_held_pos"] + res.records[0]["n_held_neg"], len(test.held_rows),
                     res.seconds))
        with StoreSQL(store) as q:
            pick = best_vector(q, f.stem, model_key=res.key.model_key)
        X = read_rows(arr[f"L{pick['layer']}"], test.held_rows)
        pick_test = auroc(X @ np.asarray(pick["vector"], np.float64), test.held_pos)
        plain = plain_probe(store, res.key, f.stem, test)
        versus.append((f.stem, pick, pick_test, plain))
    print("\n| trait | val n / test n | " + " | ".join(methods) + " | extract s |")
    print("|---|---|" + "---|" * len(methods) + "---|")
    for trait, best, n_held, n_test, secs in rows:
        cells = [f"L{best[m]['layer']} {best[m]['auroc']:.3f} / {best[m]['test_auroc']:.3f}" for m in methods]
        print(f"| {trait} | {n_held} / {n_test} | " + " | ".join(cells) + f" | {secs:.0f} |")
    print("\ncells: best layer by val AUROC, then val AUROC / test AUROC of that vector; stability of the "
          "best probe vectors: " + ", ".join(f"{t} {b['probe']['stability']:.2f}" for t, b, *_ in rows))
    print("\n| trait | rank's pick (val) | its test AUROC | plain probe: layer (val) | its test AUROC | difference |")
    print("|---|---|---|---|---|---|")
    for trait, pick, pick_test, (layer, val, test_auc) in versus:
        print(f"| {trait} | {pick['method']} L{pick['layer']} ({pick['auroc']:.3f}, d {pick['cohens_d']:.2f}) | "
              f"{pick_test:.3f} | L{layer} ({val:.3f}) | {test_auc:.3f} | {pick_test - test_auc:+.3f} |")
    print(f"\nworst difference: {min(v[2] - v[3][2] for v in versus):+.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")


def plain_probe(store, key, trait, test) -> tuple[int, float, float]:
    """What a user writes without traitlens: LogisticRegression (scikit-learn defaults, raw
    features) per layer on the train rows, the layer with the best val AUROC, scored on test."""
    from sklearn.linear_model import LogisticRegression

    val = contrastive_set(store, key, trait, held_split="val")
    arr = store.zarr_root()[key.path]
    best = None
    for layer in store.layers(key):
        a = arr[f"L{layer}"]
        clf = LogisticRegression(max_iter=1000).fit(read_rows(a, val.train_rows), val.train_pos)
        v = auroc(clf.decision_function(read_rows(a, val.held_rows)), val.held_pos)
        if best is None or v > best[1]:
            best = (layer, v, clf)
    layer, v, clf = best
    return layer, v, auroc(clf.decision_function(read_rows(arr[f"L{layer}"], test.held_rows)), test.held_pos)


if __name__ == "__main__":
    main()
