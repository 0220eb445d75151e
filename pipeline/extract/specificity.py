"""Specificity beyond the corpus: do a vector's held-out positives stand out among prompts that
are not the trait's at all (``extract --background CORPUS``)?

A vector can separate its own corpus perfectly and still score unrelated prompts as the trait
(the issue's example: "Science isn't very important" ranking as psychopathy). With a background
corpus split off as in :class:`~.contrastive.Background`, each vector is also read on its
held-out split pooled with the held-out background prompts:

- ``spec_auroc``: P(a held-out positive projects higher than a held-out background prompt);
- ``spec_precision``: the share of held-out positives among the top decile of the pool (held-out
  positives, negatives and background prompts, highest projections first), read against
  ``spec_base``, their share of the whole pool (what a random order gives);
- ``spec_floor_length``: the token count's ``spec_auroc``, oriented on train (positives against
  the train background, else against the train negatives): how far length alone gets.

Projections ``p`` are float ``[n]``; ``pos`` bool ``[n]``.
"""

from __future__ import annotations

import math

import numpy as np

from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.metrics import auroc

TOP_SHARE = 0.1  # the top decile


def top_precision(p: np.ndarray, pos: np.ndarray, share: float = TOP_SHARE) -> float:
    """The share of positives among the ``ceil(share * n)`` highest of ``p`` (ties broken
    against the positives: a tie never flatters a vector)."""
    k = max(1, math.ceil(share * len(p)))
    order = np.lexsort((pos.astype(np.int8), -np.asarray(p, dtype=np.float64)))  # score desc, negatives first
    return float(pos[order[:k]].mean())


def specificity(p_held: np.ndarray, held_pos: np.ndarray, p_background: np.ndarray) -> dict[str, float]:
    """``spec_auroc``, ``spec_precision`` and ``spec_base`` of one vector (module docstring)."""
    held_pos = np.asarray(held_pos, dtype=bool)
    p_pos = p_held[held_pos]
    ranked = np.concatenate([p_pos, p_background])
    is_pos = np.r_[np.ones(len(p_pos), bool), np.zeros(len(p_background), bool)]
    pool = np.concatenate([p_held, p_background])
    pool_pos = np.r_[held_pos, np.zeros(len(p_background), bool)]
    return {"spec_auroc": auroc(ranked, is_pos), "spec_precision": top_precision(pool, pool_pos),
            "spec_base": float(pool_pos.mean())}


def specificity_floor(cset: ContrastiveSet) -> dict[str, float | None]:
    """``{"spec_floor_length": AUROC}``: the token count in place of a vector (module docstring);
    None without a background."""
    bg = cset.background
    if bg is None:
        return {"spec_floor_length": None}
    tr_pos = cset.train_tokens[cset.train_pos].astype(np.float64)
    tr_other = bg.train_tokens if len(bg.train_tokens) else cset.train_tokens[~cset.train_pos]
    sign = 1.0 if auroc(np.r_[tr_pos, tr_other], np.r_[np.ones(len(tr_pos), bool), np.zeros(len(tr_other), bool)]) \
        >= 0.5 else -1.0
    he_pos = cset.held_tokens[cset.held_pos].astype(np.float64)
    return {"spec_floor_length": auroc(sign * np.r_[he_pos, bg.held_tokens],
                                       np.r_[np.ones(len(he_pos), bool), np.zeros(len(bg.held_tokens), bool)])}
