"""Extraction speed: `traitlens extract` beside a plain per-layer loop of sklearn/torch calls.

Same store, same rows, one process; prints seconds and the ratio.

    python bench/bench_extract.py [--layers 30] [--n 2000] [--d 576] [--n-boot 0]

The data: a synthetic store (2 x n/2 rows of d features per layer, a planted direction per
layer, anisotropic noise) written through the real store API, so the bench runs anywhere.
The plain loop is what a user writes without traitlens: per layer, read the rows, then
mean difference (numpy), pca-diff (sklearn PCA on paired differences), FastICA (sklearn,
8 components, whitening inside), LogisticRegression (sklearn, raw features), a gradient
direction (torch Adam, 500 steps), a random direction, AUROC of each on the held-out rows,
and ``n_boot`` bootstrap refits of each for stability.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.testing import KEY, synthetic_store

from traitlens.pipeline.extract.contrastive import contrastive_set  # noqa: E402
from traitlens.pipeline.extract.jobs import ExtractConfig, extract  # noqa: E402


def plain_loop(store, layers, n_boot, seed=0):
    import torch
    from sklearn.decomposition import PCA, FastICA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    cs = contrastive_set(store, KEY, "planted")
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
        Xall = store.activations(KEY, layer).astype(np.float64)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--n-boot", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="traitlens-bench-extract-"))
    try:
        layers = list(range(args.layers))
        store, _ = synthetic_store(tmp / "s", n=args.n, d=args.d, layers=layers, chunk_rows=256)
        print(f"{args.layers} layers x {args.n} rows x d={args.d}, n_boot={args.n_boot}, 6 methods + metrics")
        t = time.perf_counter()
        plain_loop(store, layers, args.n_boot)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        res = extract(store.root, "planted", cfg=ExtractConfig(n_boot=args.n_boot))
        t_tl = time.perf_counter() - t
        assert len(res.records) == 6 * args.layers
        print(f"| {'case':<40} | seconds | x plain loop |")
        print(f"|{'-' * 42}|---------|--------------|")
        print(f"| {'plain per-layer sklearn/torch loop':<40} | {t_plain:7.1f} | {1.0:12.2f} |")
        print(f"| {'traitlens extract (Dask, all layers)':<40} | {t_tl:7.1f} | {t_plain / t_tl:12.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
