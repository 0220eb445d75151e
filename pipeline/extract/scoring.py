"""Score stored prompts with a trait vector: the projection of each prompt's activation.

``score`` projects the stored activations of a group's prompts (all, those a SQL condition or a
corpus names) onto one vector (by id, or the one the selection rule picks) and appends them to
the ``scores`` table, keyed by (prompt_id, vector_id): the raw projection and a calibrated
scale on which 0 is the mean score of the vector's held-out negatives and 1 that of its
held-out positives. A prompt already scored on that vector is never scored again, so a rerun
writes nothing and a grown store scores only what is new. Rows are read and appended block by
block: memory is bounded by ``block_rows``, not by the store; a crash loses at most the block
in hand (the rerun scores it). The SQL ``scores`` view adds each score's percentile among all
prompts scored on the same vector.

Shapes: a block ``X`` float32 ``[m, d]``, the vector ``v`` ``[d]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traitlens.store import GroupKey, Store

from traitlens.pipeline.extract.audit import chosen_vector
from traitlens.pipeline.extract.contrastive import contrastive_set
from traitlens.pipeline.extract.methods import ExtractionError
from traitlens.pipeline.extract.streaming import BLOCK_ROWS, RowStream


@dataclass
class ScoreResult:
    vector: dict
    n_scored: int
    n_already: int
    n_missing: int  # prompts asked for that the group has not captured
    run_id: str | None


def calibration(store: Store, key: GroupKey, vec: dict) -> tuple[float, float]:
    """(mean score of the held-out negatives, of the held-out positives) of the vector's trait."""
    cs = contrastive_set(store, key, vec["trait"], held_split=vec["held_split"])
    p = RowStream(store.layer_array(key, vec["layer"]), cs.held_rows, cs.held_pos, BLOCK_ROWS).project(vec["vector"])
    return float(p[~cs.held_pos].mean()), float(p[cs.held_pos].mean())


def score(store_path, trait: str, vector_id: str | None = None, prompt_ids: set[str] | None = None,
          where: str | None = None, block_rows: int = BLOCK_ROWS) -> ScoreResult:
    """Score the group's stored prompts (``prompt_ids`` / ``where`` narrow them) on one vector."""
    import pyarrow.compute as pc

    store = Store.open(store_path)
    vec = chosen_vector(store, trait, vector_id)
    key = GroupKey(vec["model_key"], vec["fmt"], vec["site"], vec["pooling"])
    if where is not None:
        from traitlens.queries import select_prompt_ids

        chosen = select_prompt_ids(store, None, where)  # any prompt the condition picks, whatever its trait
        prompt_ids = chosen if prompt_ids is None else prompt_ids & chosen
    rows = store.group_rows(key).select(["row", "prompt_id"])
    stored = dict(zip(rows["prompt_id"].to_pylist(), rows["row"].to_pylist()))
    wanted = set(stored) if prompt_ids is None else set(prompt_ids)
    missing = len(wanted - set(stored))
    v = np.asarray(vec["vector"], dtype=np.float32)
    with store.lock("score"):  # what is already scored is read under the lock: two runs never score twice
        scores = store.table("scores", columns=["prompt_id", "vector_id"])
        done = set(scores.filter(pc.equal(scores["vector_id"], vec["vector_id"]))["prompt_id"].to_pylist())
        todo = sorted((stored[p], p) for p in wanted if p in stored and p not in done)
        already = len([p for p in wanted if p in done])
        if not todo:
            return ScoreResult(vec, 0, already, missing, None)
        lo, hi = calibration(store, key, vec)
        if not np.isfinite(hi - lo) or hi == lo:
            raise ExtractionError(f"vector {vec['vector_id']}: its held-out classes score alike; no calibrated scale")
        row_idx = np.asarray([r for r, _ in todo], dtype=np.int64)
        pids = [p for _, p in todo]
        stream = RowStream(store.layer_array(key, vec["layer"]), row_idx, np.zeros(len(row_idx), bool), block_rows)
        config = {"trait": trait, "vector_id": vec["vector_id"], "where": where, "prompts": len(todo)}
        with store.run("score", config) as run:
            from traitlens.store.runs import now_utc

            n = 0
            for X, _, start in stream.blocks():  # one part per block: a crash keeps the blocks before it
                s = (X @ v).astype(np.float64)
                stamp = now_utc()
                store.append("scores", [{"prompt_id": pids[start + i], "vector_id": vec["vector_id"],
                                         "trait": trait, "layer": vec["layer"], "score": float(s[i]),
                                         "calibrated": float((s[i] - lo) / (hi - lo)), "run_id": run.run_id,
                                         "created_at": stamp} for i in range(len(s))])
                n += len(s)
                run.counts = {"scored": n}
    return ScoreResult(vec, n, already, missing, run.run_id)
