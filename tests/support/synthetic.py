"""Synthetic stores: planted trait directions written through the real store API (no model)."""

from __future__ import annotations

import numpy as np

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.pipeline.capture.splits import hash_split
from traitlens.store import GroupKey, PendingBatch, Store

KEY = GroupKey("synthetic-0000", "raw", "resid", "last")


def planted(n: int, d: int, seed: int = 0, sep: float = 3.0, direction=None, aniso: float = 4.0):
    """``X`` [n, d] with labels ``y`` (+1/-1) that differ along one unit ``direction`` [d].

    Noise is anisotropic (three dimensions with standard deviation ``aniso``, as in real
    residual streams) so the methods that whiten have something to do; ``aniso=1`` gives
    isotropic noise. Classes sit at +-sep/2 along the direction.
    """
    rng = np.random.default_rng(seed)
    rng.standard_normal(7)  # so the planted direction never equals RandomDirection(seed)'s draw
    u = direction if direction is not None else rng.standard_normal(d)
    u = u / np.linalg.norm(u)
    y = np.where(rng.random(n) < 0.5, 1, -1)
    scales = np.ones(d)
    scales[rng.choice(d, 3, replace=False)] = aniso
    X = rng.standard_normal((n, d)) * scales + np.outer(y * sep / 2, u) + 1.5
    return X.astype(np.float64), y, u


def synthetic_store(path, n: int = 400, d: int = 24, layers=(0, 1, 2), trait: str = "planted", seed: int = 0,
                    chunk_rows: int = 32, sep: float = 3.0, scale: float = 1.0):
    """A store with ``n`` prompts whose activations at each layer carry a planted direction
    (a different one per layer). ``scale`` multiplies every activation (real residual streams
    reach hundreds at late layers). Returns (store, {layer: direction})."""
    store = Store.open(path, create=True)
    texts = [f"synthetic prompt {i}" for i in range(n)]
    ids = [prompt_id_for(t, None) for t in texts]
    labels = None
    data, dirs = {}, {}
    for layer in layers:
        X, y, u = planted(n, d, seed=seed + 100 * layer, sep=sep)
        if labels is None:
            labels = y
        else:  # same prompts, same labels at every layer
            X = _relabel(X, y, labels, u, sep)
        data[layer], dirs[layer] = (X * scale).astype(np.float32), u
    store.add_prompts([{"prompt_id": p, "text": t, "dataset": "synthetic", "trait": trait, "label": int(l),
                        "split": hash_split(p), "source": f"synthetic:{i}"}
                       for i, (p, t, l) in enumerate(zip(ids, texts, labels))])
    w = store.writer([KEY], list(layers), d, "synthetic", chunk_rows=chunk_rows)
    w.add(PendingBatch(prompt_ids=ids, token_counts=np.full(n, 5, np.int32), truncated=np.zeros(n, np.int32),
                       responses=[None] * n, pooled={("resid", "last"): data}))
    w.commit()
    return store, dirs


def _relabel(X, y_old, y_new, u, sep):
    """Move each row along ``u`` from its old class centre to its new one."""
    return X + np.outer((y_new - y_old) * sep / 2, u)
