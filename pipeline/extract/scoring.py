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
import pyarrow as pa
import pyarrow.compute as pc

from traitlens.store import GroupKey, Store

from traitlens.pipeline.extract.audit import chosen_vector, vector_group
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
    store = Store.open(store_path)
    vec = chosen_vector(store, trait, vector_id)
    key = vector_group(vec)
    if where is not None:
        from traitlens.queries import select_prompt_ids

        chosen = select_prompt_ids(store, None, where)  # any prompt the condition picks, whatever its trait
        prompt_ids = chosen if prompt_ids is None else prompt_ids & chosen
    # the bookkeeping is Arrow arrays and numpy masks over the group's rows, not Python objects per prompt
    rows = store.group_rows(key, ["row", "prompt_id"])
    ids = rows["prompt_id"].combine_chunks()
    if prompt_ids is None:
        wanted, missing = np.ones(len(ids), bool), 0
    else:
        asked = pa.array(sorted(prompt_ids), pa.string())
        wanted = pc.is_in(ids, value_set=asked).to_numpy(zero_copy_only=False)
        missing = len(asked) - int(np.count_nonzero(pc.is_in(asked, value_set=ids).to_numpy(zero_copy_only=False)))
    v = np.asarray(vec["vector"], dtype=np.float32)
    with store.lock("score"):  # what is already scored is read under the lock: two runs never score twice
        scores = store.table("scores", columns=["prompt_id", "vector_id"])
        done_ids = scores.filter(pc.equal(scores["vector_id"], vec["vector_id"]))["prompt_id"]
        done = pc.is_in(ids, value_set=done_ids.combine_chunks()).to_numpy(zero_copy_only=False)
        already = int(np.count_nonzero(wanted & done))
        pick = np.flatnonzero(wanted & ~done)
        if not len(pick):
            return ScoreResult(vec, 0, already, missing, None)
        row_nums = rows["row"].to_numpy()[pick]
        order = np.argsort(row_nums, kind="stable")  # (group rows come in row order already)
        row_idx = row_nums[order].astype(np.int64)
        pids = ids.take(pa.array(pick[order]))
        lo, hi = calibration(store, key, vec)
        if not np.isfinite(hi - lo) or hi == lo:
            raise ExtractionError(f"vector {vec['vector_id']}: its held-out classes score alike; no calibrated scale")
        stream = RowStream(store.layer_array(key, vec["layer"]), row_idx, np.zeros(len(row_idx), bool), block_rows)
        config = {"trait": trait, "vector_id": vec["vector_id"], "where": where, "prompts": len(row_idx)}
        with store.run("score", config) as run:
            from traitlens.store.runs import now_utc

            n = 0
            for X, _, start in stream.blocks():  # one part per block: a crash keeps the blocks before it
                s = (X @ v).astype(np.float64)
                stamp = now_utc()
                block_ids = pids.slice(start, len(s)).to_pylist()
                store.append("scores", [{"prompt_id": block_ids[i], "vector_id": vec["vector_id"],
                                         "trait": trait, "layer": vec["layer"], "score": float(s[i]),
                                         "calibrated": float((s[i] - lo) / (hi - lo)), "run_id": run.run_id,
                                         "created_at": stamp} for i in range(len(s))])
                n += len(s)
                run.counts = {"scored": n}
    return ScoreResult(vec, n, already, missing, run.run_id)



def background_scores(store: Store, vector_id: str, prompt_ids: set[str]) -> np.ndarray:
    """The stored scores on ``vector_id`` of the background prompts ``prompt_ids``, sorted
    ascending ``[n]`` (what :func:`background_percentile` reads a score against)."""
    t = store.table("scores", columns=["prompt_id", "vector_id", "score"])
    t = t.filter(pc.and_(pc.equal(t["vector_id"], vector_id),
                         pc.is_in(t["prompt_id"], value_set=pa.array(sorted(prompt_ids), pa.string()))))
    # a prompt scored twice on one vector (two runs racing before the lock) counts once
    first = {}
    for pid, sc in zip(t["prompt_id"].to_pylist(), t["score"].to_pylist()):
        first.setdefault(pid, sc)
    return np.sort(np.asarray(list(first.values()), dtype=np.float64))


def background_percentile(background: np.ndarray, scores) -> np.ndarray:
    """Each score's percentile among the sorted ``background`` scores, 0 to 1: the share of
    background prompts scoring below it, ties counted half. The same threshold on this scale
    means the same share of ordinary prompts flagged, whatever the trait or vector."""
    s = np.asarray(scores, dtype=np.float64)
    below = np.searchsorted(background, s, side="left")
    upto = np.searchsorted(background, s, side="right")
    return (below + upto) / (2.0 * len(background))
