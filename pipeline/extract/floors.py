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

from traitlens.store import Store

from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.metrics import auroc

FLOOR_MARGIN = 0.05  # AUROC a vector must clear above its highest floor


def _lookup(rows_sorted: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return values[np.searchsorted(rows_sorted, wanted)]


def nuisance_floors(store: Store, cset: ContrastiveSet) -> dict[str, float | None]:
    """``{"floor_length": AUROC, "floor_dataset": AUROC or None}`` for one contrastive set."""
    import pyarrow.compute as pc

    rows = store.group_rows(cset.key).select(["row", "prompt_id", "token_count"])
    row_no = rows["row"].to_numpy().astype(np.int64)
    order = np.argsort(row_no)
    row_sorted = row_no[order]
    tokens = rows["token_count"].to_numpy(zero_copy_only=False).astype(np.float64)[order]
    out: dict[str, float | None] = {"floor_length": None, "floor_dataset": None}
    tr_len, he_len = _lookup(row_sorted, tokens, cset.train_rows), _lookup(row_sorted, tokens, cset.held_rows)
    sign = 1.0 if auroc(tr_len, cset.train_pos) >= 0.5 else -1.0
    out["floor_length"] = auroc(sign * he_len, cset.held_pos)

    # each prompt's dataset for this trait (its newest record, as its label is)
    prompts = store.table("prompts", columns=["prompt_id", "trait", "dataset", "label"])
    mine = prompts.filter(pc.and_(pc.equal(prompts["trait"], cset.trait), pc.not_equal(prompts["label"], 0)))
    dataset_of = dict(zip(mine["prompt_id"].to_pylist(), mine["dataset"].to_pylist()))
    pids = np.asarray(rows["prompt_id"].to_pylist(), dtype=object)[order]
    tr_ds = [dataset_of.get(p) for p in _lookup(row_sorted, pids, cset.train_rows)]
    he_ds = [dataset_of.get(p) for p in _lookup(row_sorted, pids, cset.held_rows)]
    if len(set(tr_ds) | set(he_ds)) > 1:
        overall = (cset.train_pos.sum() + 1) / (len(tr_ds) + 2)
        counts: dict[str, list[int]] = {}
        for ds, p in zip(tr_ds, cset.train_pos):
            c = counts.setdefault(ds, [0, 0])
            c[0] += int(p)
            c[1] += 1
        share = {ds: (c[0] + 1) / (c[1] + 2) for ds, c in counts.items()}
        out["floor_dataset"] = auroc(np.array([share.get(ds, overall) for ds in he_ds]), cset.held_pos)
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
