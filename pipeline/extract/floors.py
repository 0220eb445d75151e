"""Nuisance floors: how well what is *not* the trait separates a trait's held-out rows.

A vector that classifies held-out prompts well may only be reading prompt length, or which
source file a prompt came from, when those differ between the classes. Each floor is fitted on
the train rows alone and scored (AUROC) on the held-out split, exactly like a vector:

- ``floor_length``: the prompt's token count, oriented on train (longer = positive, or shorter);
- ``floor_dataset``: the share of positives among the train rows of the prompt's dataset
  (smoothed; a dataset unseen in train scores the overall share). Only when the trait's rows
  come from more than one dataset; None otherwise.

A vector whose held-out AUROC does not beat the highest floor (random direction included) by
:data:`FLOOR_MARGIN` is flagged by ``rank``, ``vectors`` and the report.
"""

from __future__ import annotations

import numpy as np

from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.metrics import auroc

FLOOR_MARGIN = 0.05  # AUROC a vector must clear above its highest floor


def nuisance_floors(cset: ContrastiveSet) -> dict[str, float | None]:
    """``{"floor_length": AUROC, "floor_dataset": AUROC or None}`` for one contrastive set, from
    the token counts and datasets it read with its rows (no I/O of its own)."""
    out: dict[str, float | None] = {"floor_length": None, "floor_dataset": None}
    tr_len, he_len = cset.train_tokens.astype(np.float64), cset.held_tokens.astype(np.float64)
    sign = 1.0 if auroc(tr_len, cset.train_pos) >= 0.5 else -1.0
    out["floor_length"] = auroc(sign * he_len, cset.held_pos)
    tr_ds, he_ds = cset.train_datasets, cset.held_datasets
    if len(np.union1d(tr_ds, he_ds)) > 1:
        overall = (cset.train_pos.sum() + 1) / (len(tr_ds) + 2)
        n = np.bincount(tr_ds, minlength=len(cset.datasets))
        k = np.bincount(tr_ds, weights=cset.train_pos, minlength=len(cset.datasets))
        share = np.where(n > 0, (k + 1) / (n + 2), overall)  # a dataset unseen in train: the overall share
        out["floor_dataset"] = auroc(share[he_ds], cset.held_pos)
    return out


def floor_flag(rec: dict, random_auroc: float | None = None, margin: float = FLOOR_MARGIN) -> str | None:
    """Why a vector record does not clear its floors (a short sentence), or None when it does."""
    floors = {"token count": rec.get("floor_length"), "source dataset": rec.get("floor_dataset"),
              "random direction": random_auroc}
    floors = {k: v for k, v in floors.items() if v is not None and v == v}
    if not floors or rec.get("auroc") is None:
        return None
    name, top = max(floors.items(), key=lambda kv: kv[1])
    if rec["auroc"] - top >= margin:
        return None
    if name == "random direction":  # the split cannot tell this vector from chance directions
        return (f"AUROC {rec['auroc']:.3f} is within {margin:.2f} of a random direction's {top:.3f}: this held-out "
                "split cannot tell it from chance directions (judge it by steering, or a harder split)")
    return f"AUROC {rec['auroc']:.3f} is within {margin:.2f} of the {name} floor {top:.3f}: it may read the {name}"
