"""Per-sample statistics of a steering evaluation: intervals, wrong-way fractions, slopes, fronts.

- :func:`bootstrap_ci`: percentile bootstrap interval of a mean (seeded, so a rerun agrees);
- :func:`wilson`: the Wilson score interval of a fraction (the share of samples moving the wrong way);
- :func:`slopes`: steerability per sample, the least-squares slope of its measure against alpha;
- :func:`pareto_front`: the (effect up, damage down) points no other point beats on both;
  :func:`pareto_front_nd` the same with several damages (KL and a capability fall).

Shapes: ``values`` ``[n]``; ``measures`` ``[n, k]`` against ``alphas`` ``[k]``.
"""

from __future__ import annotations

import math

import numpy as np

N_BOOT = 2000


def bootstrap_ci(values, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN for fewer than two)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of the fraction ``k / n``."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def slopes(alphas, measures) -> np.ndarray:
    """Each sample's least-squares slope of its measure against alpha: ``[n]``."""
    a = np.asarray(alphas, dtype=np.float64)
    y = np.asarray(measures, dtype=np.float64)
    ac = a - a.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ ac / (ac @ ac)


def pareto_front(effects, damages) -> list[int]:
    """Indices of the points on the front (higher effect, lower damage), by increasing damage."""
    e, d = np.asarray(effects, dtype=np.float64), np.asarray(damages, dtype=np.float64)
    order = sorted(range(len(e)), key=lambda i: (d[i], -e[i]))
    front, best = [], -math.inf
    for i in order:
        if e[i] > best:
            front.append(i)
            best = e[i]
    return front


def pareto_front_nd(effects, *damages) -> list[int]:
    """Indices of the points no other point beats on every objective (higher effect, each damage
    lower) and strictly on one, by increasing first damage; with one damage, :func:`pareto_front`."""
    e = np.asarray(effects, dtype=np.float64)
    d = np.stack([np.asarray(x, dtype=np.float64) for x in damages], axis=1)  # [n, k]
    pts = np.concatenate([-e[:, None], d], axis=1)  # everything to minimise
    keep = [i for i in range(len(e))
            if not any(np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i]) for j in range(len(e)) if j != i)]
    return sorted(keep, key=lambda i: (d[i, 0], -e[i]))
