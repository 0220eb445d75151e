"""Stability: how far a method's vector moves when its training rows are resampled.

A bootstrap resample is a count per original row (row ``i`` drawn ``w[i]`` times, classes drawn
separately so each keeps its size). Every statistic of the resample is a ``w``-weighted
statistic of the original rows, so no resample is ever copied: mean difference and the random
floor need weighted means (O(n d)); pca-diff, gradient and ICA's whitening one weighted Gram
matrix shared between them; the probe a weighted Newton-CG from the full fit's optimum. Each
result equals the method's ``fit`` on the repeated rows (``tests/test_methods.py`` checks it
against exactly that).

Shapes: ``X`` float64 ``[n, d]``, ``pos`` bool ``[n]``, counts int ``[n_boot, n]``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable

import numpy as np

from traitlens.pipeline.extract.methods import ClassStats, Direction
from traitlens.pipeline.extract.metrics import cosine


# Each resample refits every method, so the count is bounded: 8 to 100 are typical, and a
# mistyped 99999999999 would otherwise run for ever (it once asked for a 706 TiB count matrix).
N_BOOT_MAX = 1000


def bootstrap_draws(pos: np.ndarray, n_boot: int, rng: np.random.Generator):
    """Yield ``n_boot`` draw-count vectors ``[n]``, one resample at a time (never all at once):
    per resample, ``n_pos`` rows drawn with replacement from the positives and ``n_neg`` from
    the negatives."""
    p_idx, n_idx = np.flatnonzero(pos), np.flatnonzero(~pos)
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(p_idx, len(p_idx)), rng.choice(n_idx, len(n_idx))])
        yield np.bincount(idx, minlength=len(pos)).astype(np.int64)


def bootstrap_counts(pos: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` draw counts (:func:`bootstrap_draws` stacked)."""
    return np.stack(list(bootstrap_draws(pos, n_boot, rng))) if n_boot else np.zeros((0, len(pos)), np.int64)


class Resample:
    """One bootstrap resample: the original rows ``X`` [n, d], ``pos`` [n] and counts ``w`` [n].
    Statistics are computed once, on first use, and shared by every method refitted on it."""

    def __init__(self, X: np.ndarray, pos: np.ndarray, w: np.ndarray):
        self.X, self.pos, self.w = X, pos, w

    @cached_property
    def mean_stats(self) -> ClassStats:
        return ClassStats.empty(self.X.shape[1], means_only=True).update(self.X, self.pos, self.w)

    @cached_property
    def stats(self) -> ClassStats:
        return ClassStats.empty(self.X.shape[1]).update(self.X, self.pos, self.w)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The resample materialised: ``(X [sum(w), d], y [sum(w)] in {+1, -1})``."""
        return np.repeat(self.X, self.w, axis=0), np.where(np.repeat(self.pos, self.w), 1, -1)


def stability(fitted: dict[str, Direction], make: Callable[[str, int], Direction], X: np.ndarray,
              pos: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict[str, float]:
    """Mean cosine between each fitted vector and its refits on ``n_boot`` bootstrap resamples.

    ``make(name, b)`` builds a fresh estimator for resample ``b`` (the random floor gets a new
    seed per resample, so its stability sits near 0). NaN per method when ``n_boot`` is 0.
    """
    if n_boot <= 0:
        return {m: float("nan") for m in fitted}
    cos: dict[str, list[float]] = {m: [] for m in fitted}
    for b, w in enumerate(bootstrap_draws(pos, n_boot, rng)):
        r = Resample(X, pos, w)
        for name, full in fitted.items():
            cos[name].append(cosine(make(name, b).refit(r, init=full).vector_, full.vector_))
    return {m: float(np.mean(c)) for m, c in cos.items()}
