"""The threshold of a condition vector (conditional steering, as CAST does it), learned on held-out data.

A prompt passes the condition when its projection on the condition vector, at the vector's
layer and pooling, is above the threshold. The threshold is the cut with the best F1 for the
condition trait's held-out positives against its held-out negatives, computed on their stored
activations; it is stored in the ``conditions`` table (one row per vector, learned once) and
shown wherever it is used.
"""

from __future__ import annotations

from traitlens.store import Store

from traitlens.pipeline.extract.audit import vector_group
from traitlens.pipeline.extract.contrastive import contrastive_set
from traitlens.pipeline.extract.metrics import best_f1_threshold
from traitlens.pipeline.extract.streaming import BLOCK_ROWS, RowStream


def condition_threshold(store: Store, vec: dict) -> dict:
    """The stored ``conditions`` row of ``vec``; learned and stored first when there is none."""
    from traitlens.store.store import new_run_id, now_utc

    have = [r for r in store.table("conditions").to_pylist() if r["vector_id"] == vec["vector_id"]]
    if have:
        return have[-1]
    key = vector_group(vec)
    cs = contrastive_set(store, key, vec["trait"], held_split=vec["held_split"])
    p = RowStream(store.layer_array(key, vec["layer"]), cs.held_rows, cs.held_pos, BLOCK_ROWS).project(vec["vector"])
    thr, f1, precision, recall = best_f1_threshold(p, cs.held_pos)
    row = {"vector_id": vec["vector_id"], "trait": vec["trait"], "layer": vec["layer"], "pooling": vec["pooling"],
           "threshold": thr, "f1": f1, "precision": precision, "recall": recall, "split": cs.held_split,
           "n_pos": int(cs.held_pos.sum()), "n_neg": int((~cs.held_pos).sum()), "run_id": new_run_id("condition"),
           "created_at": now_utc()}
    with store.lock("condition threshold"):
        store.append("conditions", [row])
    return row
