"""An audit of labels: training rows that sit deep on the wrong side of a trait's vector.

A prompt labelled positive whose activation projects far below the vector's decision threshold
(or a negative far above it) is either mislabelled, or a prompt that mixes both sides, or a
blind spot of the vector; each deserves a look. Depth is the signed distance to the threshold
the vector chose on train (``threshold``: the one that maximises balanced accuracy), in units
of the projections' pooled within-class spread (median absolute deviation, scaled to a
normal's sd), negative on the wrong side.
The labels are the store's current ones (a relabelled prompt is audited as relabelled).

Shapes: projections ``p`` float ``[n_train]``.
"""

from __future__ import annotations

import numpy as np

from traitlens.store import GroupKey, Store

from traitlens.pipeline.extract.contrastive import contrastive_set
from traitlens.pipeline.extract.methods import ExtractionError
from traitlens.pipeline.extract.streaming import BLOCK_ROWS, RowStream


def chosen_vector(store: Store, trait: str, vector_id: str | None = None) -> dict:
    """:func:`traitlens.queries.selection.chosen_vector`, or an error that says what to run."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import chosen_vector as pick

    with StoreSQL(store) as q:
        vec = pick(q, trait, vector_id)
    if vec is None:
        raise ExtractionError(f"--vector-id {vector_id}: no vector has that id; `traitlens vectors` lists the stored "
                              "ids" if vector_id else
                              f"no vector for trait {trait!r}; run `traitlens extract --trait {trait}` first")
    return vec


def vector_group(vec: dict) -> GroupKey:
    """The group whose rows a vector was fitted on (and whose rows it scores)."""
    return GroupKey(vec["model_key"], vec["fmt"], vec["site"], vec["pooling"])


def wrong_side(store: Store, trait: str, vector_id: str | None = None, top: int = 20) -> tuple[dict, list[dict]]:
    """``(vector, rows)``: up to ``top`` train rows on the wrong side of the vector's threshold,
    deepest first, each with prompt_id, label, dataset, text, projection and depth (sd units)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vec = chosen_vector(store, trait, vector_id)
    key = vector_group(vec)
    cs = contrastive_set(store, key, trait, held_split=vec["held_split"])
    p = RowStream(store.layer_array(key, vec["layer"]), cs.train_rows, cs.train_pos, BLOCK_ROWS).project(vec["vector"])
    pos = cs.train_pos
    # robust spread (MAD): the mislabelled rows being looked for would inflate a plain std
    mad = [1.4826 * np.median(np.abs(x - np.median(x))) for x in (p[pos], p[~pos])]
    sd = np.sqrt(0.5 * (mad[0] ** 2 + mad[1] ** 2)) + 1e-12
    depth = np.where(pos, p - vec["threshold"], vec["threshold"] - p) / sd
    order = [i for i in np.argsort(depth) if depth[i] < 0][:top]
    rows = store.group_rows(key).select(["row", "prompt_id"])
    pid_of = dict(zip(rows["row"].to_pylist(), rows["prompt_id"].to_pylist()))
    wanted = [pid_of[int(cs.train_rows[i])] for i in order]
    prompts = store.table("prompts", columns=["prompt_id", "trait", "dataset", "text", "label"])
    mine = prompts.filter(pc.and_(pc.equal(prompts["trait"], trait),
                                  pc.is_in(prompts["prompt_id"], value_set=pa.array(wanted, pa.string()))))
    info = {r["prompt_id"]: r for r in mine.to_pylist()}  # newest record last: it wins
    out = []
    for i, pid in zip(order, wanted):
        r = info.get(pid, {})
        out.append({"prompt_id": pid, "label": 1 if pos[i] else -1, "dataset": r.get("dataset"),
                    "text": r.get("text"), "projection": float(p[i]), "depth": float(depth[i])})
    return vec, out
