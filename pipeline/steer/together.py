"""Several pushes measured at once: does the set steer, by more than its parts, for what damage?

``evaluate --add A --add B`` measures the trait's causal measure (:mod:`.evaluate`) under every
push together, under each push alone (so the sum of the parts' shifts sits beside the whole's:
pushes add up in the residual stream, their effects need not), and under the same pushes with
each vector replaced by a random direction (the floor). Rows go to the ``steering_together``
table, one combination id per set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np


def random_twin(items: list, seed: int = 0) -> list:
    """The same pushes (layer, alpha, scale, site, positions) along seeded random unit directions."""
    rng = np.random.default_rng(seed)
    return [replace(p, vector=rng.standard_normal(len(np.asarray(p.vector))), label=f"random for {p.label}")
            for p in items]


def measure_together(evaluator, items: list, random_floor: bool = True, seed: int = 0,
                     log=lambda message: None) -> list[dict]:
    """Rows of :meth:`.Evaluator.together`, each with its ``part``: every push together; each
    alone (when there are several); and the random twin of the set (``random_floor``).
    ``log`` hears a line as each part starts and ends (each is a few forward passes and
    generations over the held-out and neutral prompts)."""
    import time

    parts = [("together", list(items))] + ([("alone", [p]) for p in items] if len(items) > 1 else [])
    if random_floor:
        parts.append(("random", random_twin(items, seed)))
    rows = []
    for k, (part, chosen) in enumerate(parts, 1):
        start = time.perf_counter()
        log(f"[{k}/{len(parts)}] {part}: " + "; ".join(p.label or p.describe() for p in chosen))
        rows.append({**evaluator.together(chosen), "part": part})
        log(f"[{k}/{len(parts)}] done in {time.perf_counter() - start:.0f} s: shift {rows[-1]['shift']:+.3f}")
    return rows


def push_record(p, vec: dict | None) -> dict:
    """What one push was, for the ``pushes`` JSON (``vec``: the stored vector it came from)."""
    head = {"vector_id": vec["vector_id"], "trait": vec["trait"], "method": vec["method"]} if vec else \
        {"vector_id": None, "trait": None, "method": "random"}
    return {**head, "layer": p.layer, "alpha": p.alpha, "scale": p.scale, "site": p.site, "positions": p.positions}


def combination_id(records: list[dict]) -> str:
    """A short stable id of one set of pushes (the same set measured again shares it)."""
    key = json.dumps([{k: r[k] for k in ("vector_id", "layer", "alpha", "site", "positions")} for r in records],
                     sort_keys=True)
    return "combo-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def together_records(trait: str, rows: list[dict], items: list, vecs: list[dict], run_id: str) -> list[dict]:
    """``steering_together`` rows of :func:`measure_together`'s result; ``vecs``: the stored
    vector behind each of ``items``."""
    from traitlens.store.store import now_utc

    whole = [push_record(p, v) for p, v in zip(items, vecs)]
    cid, stamp = combination_id(whole), now_utc()
    alone = iter(whole)
    out = []
    for r in rows:
        if r["part"] == "together":
            pushes = whole
        elif r["part"] == "alone":
            pushes = [next(alone)]
        else:
            pushes = [push_record(p, None) for p in items]  # the twin differs only in its directions
        out.append({"combination_id": cid, "trait": trait, "kind": r["kind"], "part": r["part"],
                    "pushes": json.dumps(pushes), **{k: r.get(k) for k in _MEASURED}, "run_id": run_id,
                    "created_at": stamp})
    return out


_MEASURED = ("n", "unsteered", "plus", "minus", "shift", "ci_low", "ci_high", "wrong_way", "kl", "kl_low", "kl_high",
             "perplexity", "perplexity_unsteered", "distinct2", "distinct2_unsteered", "judge", "judge_unsteered",
             "kl_measure")


def additivity_line(rows: list[dict]) -> str | None:
    """The whole's shift beside the sum of its parts' (None with one push)."""
    parts = [r for r in rows if r["part"] == "alone"]
    whole = next(r for r in rows if r["part"] == "together")
    if not parts:
        return None
    total = sum(r["shift"] for r in parts)
    return (f"together {whole['shift']:+.3f} [{whole['ci_low']:+.3f}, {whole['ci_high']:+.3f}] against the sum of "
            f"the pushes alone {total:+.3f} ({' + '.join(format(r['shift'], '+.3f') for r in parts)})")


def floor_line(rows: list[dict]) -> str | None:
    """Whether the whole's interval lies above the random twin's (None without the floor)."""
    from traitlens.pipeline.steer.rule import shown_to_steer

    whole = next(r for r in rows if r["part"] == "together")
    rand = next((r for r in rows if r["part"] == "random"), None)
    if rand is None:
        return None
    up = whole["shift"] >= 0  # a set meant to lower the measure is compared the other way
    ok = shown_to_steer(whole, rand) if up else shown_to_steer(
        {"ci_low": -whole["ci_high"]}, {"ci_high": -rand["ci_low"]})
    return (f"random directions with the same pushes: {rand['shift']:+.3f} [{rand['ci_low']:+.3f}, "
            f"{rand['ci_high']:+.3f}] — " + ("shown to steer (the set's interval lies " + ("above" if up else "below") + " random's)" if ok
                                              else "NOT shown to steer (its interval is not " + ("above" if up else "below") + " random's)"))
