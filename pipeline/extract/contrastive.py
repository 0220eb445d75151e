"""Contrastive sets: which stored rows are positives and negatives of a trait, per split.

A set joins the ``prompts`` table (trait, label, split) with one group's committed ``rows``
(array row per prompt). Its fingerprint hashes the (prompt_id, label, split) triples used, so
a vector's provenance says exactly which rows made it, and a refresh can tell when it is stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from traitlens.store import GroupKey, Store

from traitlens.pipeline.extract.methods import ExtractionError

MIN_PER_CLASS = 2


@dataclass
class ContrastiveSet:
    """Array rows and labels of one trait in one group. Rows are ascending within each split."""

    key: GroupKey
    trait: str
    train_rows: np.ndarray  # int64 [n_train]
    train_pos: np.ndarray  # bool [n_train]
    held_rows: np.ndarray  # int64 [n_held]
    held_pos: np.ndarray  # bool [n_held]
    held_split: str
    fingerprint: str
    where_sql: str | None = None

    @property
    def n_pos(self) -> int:
        return int(self.train_pos.sum())

    @property
    def n_neg(self) -> int:
        return int((~self.train_pos).sum())


def fingerprint(triples: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for pid, label, split in sorted(triples):
        h.update(f"{pid}\t{label}\t{split}\n".encode())
    return h.hexdigest()[:16]


def contrastive_set(store: Store, key: GroupKey, trait: str, train_split: str = "train", held_split: str = "auto",
                    prompt_ids: set[str] | None = None, where_sql: str | None = None) -> ContrastiveSet:
    """Build the set; ``held_split='auto'`` uses val, else test. ``prompt_ids`` restricts it
    (the ids a SQL WHERE selected)."""
    prompts = store.table("prompts", columns=["prompt_id", "trait", "label", "split"]).to_pylist()
    traits = sorted({p["trait"] for p in prompts})
    if trait not in traits:
        raise ExtractionError(f"trait {trait!r} is not in the store; traits: {', '.join(traits) or 'none'}")
    labels: dict[str, tuple[int, str]] = {}
    for p in prompts:
        if p["trait"] != trait or p["label"] == 0 or (prompt_ids is not None and p["prompt_id"] not in prompt_ids):
            continue
        prev = labels.get(p["prompt_id"])
        if prev is not None and prev[0] != p["label"]:
            raise ExtractionError(f"prompt {p['prompt_id']} has labels {prev[0]:+d} and {p['label']:+d} for trait "
                                  f"{trait!r} (two datasets disagree); fix the corpora")
        labels[p["prompt_id"]] = (p["label"], p["split"])
    rows = store.group_rows(key).select(["row", "prompt_id"]).to_pylist()
    if not rows:
        raise ExtractionError(f"nothing is stored for {key.path}; run `traitlens ingest` first")
    by_split: dict[str, list[tuple[int, bool]]] = {"train": [], "val": [], "test": []}
    used = []
    for r in rows:
        lab = labels.get(r["prompt_id"])
        if lab is not None:
            by_split[lab[1]].append((r["row"], lab[0] > 0))
            used.append((r["prompt_id"], lab[0], lab[1]))
    if held_split == "auto":
        held_split = "val" if by_split["val"] else "test"
    if held_split == train_split:
        raise ExtractionError("the held-out split must differ from the training split")

    def arrays(split):
        items = sorted(by_split.get(split, []))
        return (np.asarray([i for i, _ in items], dtype=np.int64), np.asarray([p for _, p in items], dtype=bool))

    tr, trp = arrays(train_split)
    he, hep = arrays(held_split)
    for name, r_, p_ in (("train", tr, trp), (held_split, he, hep)):
        n_pos, n_neg = int(p_.sum()), int((~p_).sum())
        if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
            raise ExtractionError(
                f"trait {trait!r} in {key.path}, split {name!r}: {n_pos} positive and {n_neg} negative rows; "
                f"need at least {MIN_PER_CLASS} of each. Ingest labelled prompts of both sides "
                "(+1 and -1), or give the corpus a split column")
    return ContrastiveSet(key, trait, tr, trp, he, hep, held_split, fingerprint(used), where_sql)
