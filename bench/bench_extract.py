"""Extraction speed at the defaults: `traitlens extract` beside a plain per-layer loop.

Same store, same rows, one process; prints seconds and the ratios.

    python bench/bench_extract.py                          # synthetic: 30 layers x 1,000 rows x d 576
    python bench/bench_extract.py --store persona.store --trait agreeableness   # real rows
    python bench/bench_extract.py --plain-boot             # also the plain loop with its own bootstrap

Rows: a synthetic store (2 x n/2 rows of d features per layer, a planted direction per layer,
anisotropic noise) written through the real store API, so the bench runs anywhere; or a real
store's trait (`bench/persona_table.py` builds one from ../shared/data).
The plain loop is what a user writes without traitlens: per layer, read the rows, then
mean difference (numpy), pca-diff (sklearn PCA on paired differences), FastICA (sklearn,
8 components, whitening inside), LogisticRegression (sklearn, raw features), a gradient
direction (torch Adam, 500 steps), a random direction, AUROC of each on the held-out rows —
no stability, which is what users skip. traitlens runs at its defaults (all six methods,
8 bootstrap refits for stability) and with ``--n-boot 0``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.testing import KEY, synthetic_store

from traitlens.pipeline.extract.contrastive import contrastive_set
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract, resolve_group
from traitlens.store import Store


def plain_loop(store, key, trait, layers, n_boot, seed=0):
    import torch
    from sklearn.decomposition import PCA, FastICA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    cs = contrastive_set(store, key, trait)
    rng = np.random.default_rng(seed)

    def fit_all(X, pos):
        out = {"mean_diff": X[pos].mean(0) - X[~pos].mean(0)}
        P, N = X[pos], X[~pos]
        m = min(len(P), len(N))
        diffs = P[rng.permutation(len(P))[:m]] - N[rng.permutation(len(N))[:m]]
        out["pca_diff"] = PCA(1).fit(diffs).components_[0]
        ica = FastICA(n_components=8, random_state=seed, max_iter=200, tol=1e-3).fit(X)
        S = ica.transform(X)
        best = np.argmax(np.abs(S[pos].mean(0) - S[~pos].mean(0)) / S.std(0))
        out["ica"] = ica.components_[best]
        out["probe"] = LogisticRegression(max_iter=1000).fit(X, pos).coef_[0]
        Xt = torch.tensor(X, dtype=torch.float32)
        pt = torch.tensor(pos)
        v = torch.randn(X.shape[1], generator=torch.Generator().manual_seed(seed), requires_grad=True)
        opt = torch.optim.Adam([v], lr=0.01)
        for _ in range(500):
            opt.zero_grad()
            p = Xt @ v
            loss = -(p[pt].mean() - p[~pt].mean()) / (p.std() + 1e-6) + 0.1 * (v.norm() - 1) ** 2
            loss.backward()
            opt.step()
        out["gradient"] = v.detach().numpy().astype(np.float64)
        out["random"] = rng.standard_normal(X.shape[1])
        for k, w in out.items():  # orient and normalise like traitlens does
            w = w / np.linalg.norm(w)
            out[k] = w if (X[pos].mean(0) - X[~pos].mean(0)) @ w >= 0 else -w
        return out

    results = {}
    for layer in layers:
        Xall = store.activations(key, layer).astype(np.float64)
        X, pos = Xall[cs.train_rows], cs.train_pos
        Xh, posh = Xall[cs.held_rows], cs.held_pos
        vecs = fit_all(X, pos)
        aucs = {k: roc_auc_score(posh, Xh @ w) for k, w in vecs.items()}
        stab = {k: [] for k in vecs}
        for _ in range(n_boot):
            idx = rng.choice(len(X), len(X))
            for k, w in fit_all(X[idx], pos[idx]).items():
                stab[k].append(w @ vecs[k])
        results[layer] = (vecs, aucs, stab)
    return results


def compare_with_stored(store, records) -> None:
    """Held-out AUROC of every (layer, method) beside the vectors the source store already holds
    for the same trait and split (an earlier version's): the largest difference per method."""
    old = {}
    for v in store.table("vectors").to_pylist():
        if v["trait"] == records[0]["trait"] and v.get("held_split", "val") == records[0]["held_split"]:
            old[(v["model_key"], v["fmt"], v["pooling"], v["layer"], v["method"])] = v  # newest wins
    worst: dict[str, float] = {}
    for r in records:
        o = old.get((r["model_key"], r["fmt"], r["pooling"], r["layer"], r["method"]))
        if o is not None and r["method"] != "random":
            worst[r["method"]] = max(worst.get(r["method"], 0.0), abs(r["auroc"] - o["auroc"]))
    if worst:
        print("largest |held-out AUROC - stored vector's| per method, over the layers: "
              + ", ".join(f"{m} {d:.4f}" for m, d in sorted(worst.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--store", help="a real store (default: a synthetic one in a temporary folder)")
    ap.add_argument("--trait", default="planted")
    ap.add_argument("--plain-boot", action="store_true", help="also time the plain loop with 8 bootstrap refits")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-extract-"))
    try:
        if args.store:  # extract into a copy without vectors, so every vector is computed here
            shutil.copytree(args.store, tmp / "s", ignore=lambda d, names: ["vectors"] if Path(d).name == "tables" else [])
            store = Store.open(tmp / "s")
            key = resolve_group(store)
            layers = sorted(store.layers(key))[:args.layers]
        else:
            layers = list(range(args.layers))
            store, _ = synthetic_store(tmp / "s", n=args.n, d=args.d, layers=layers, chunk_rows=256)
            key = KEY
        cs = contrastive_set(store, key, args.trait)
        print(f"{args.trait}: {len(layers)} layers x {cs.n_pos + cs.n_neg} train rows x d={store.layer_array(key, layers[0]).shape[1]}, "
              f"{os.cpu_count()} cores")
        rows = []
        t = time.perf_counter()
        plain_loop(store, key, args.trait, layers, 0)
        t_plain = time.perf_counter() - t
        rows.append(("plain per-layer sklearn/torch loop, no stability", t_plain))
        if args.plain_boot:
            t = time.perf_counter()
            plain_loop(store, key, args.trait, layers, 8)
            rows.append(("plain loop + 8 bootstrap refits", time.perf_counter() - t))
        results = {}
        for n_boot, label in ((8, "traitlens extract, defaults (stability 8)"), (0, "traitlens extract --n-boot 0")):
            t = time.perf_counter()
            results[n_boot] = extract(store.root, args.trait, layers=layers, model=key.model_key, fmt=key.fmt,
                                      cfg=ExtractConfig(n_boot=n_boot))
            rows.append((label, time.perf_counter() - t))
            assert len(results[n_boot].records) == 6 * len(layers)
        print(f"| {'case':<50} | seconds | x plain loop |")
        print(f"|{'-' * 52}|---------|--------------|")
        for label, sec in rows:
            print(f"| {label:<50} | {sec:7.1f} | {t_plain / sec:12.2f} |")
        if args.store:
            compare_with_stored(Store.open(args.store), results[8].records)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
