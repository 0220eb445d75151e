"""The one way to pick "the vector to use" and "the held-out texts of a trait".

Every command that needs a vector (``rank``, ``steer``, ``monitor``, ``evaluate``), the workflow
runner, the demo and the benches pick through here, so they agree.

The rule: the newest vector of each (group, layer, method) cell is a candidate; candidates are
ordered by the held-out metric asked for (AUROC by default), ties broken by held-out Cohen's d
— which keeps separating candidates after AUROC saturates at 1.000 — then by stability, and only
then by layer (so that the order is total; never by layer alone). The random baseline is never
picked. :data:`RULE` says this in words; ``rank`` prints it.

A candidate must be usable. Cheaply, from its scalar columns (:func:`usable_sql`): its held-out
AUROC and Cohen's d and its raw norm finite, the norm above 0 — a vector whose values are not
numbers scores NaN, and an overflowed or cancelled combination has an infinite or zero norm; this
is all ``rank`` asks (reading every vector's values would cost it ~20x on a store of thousands of
wide vectors). Wherever the values themselves are read — the pick (:func:`best_vector`), a vector
named by id (:func:`chosen_vector`), records in memory (:func:`usable`) — they must be finite and
not all zero too. traitlens no longer stores any other kind (see
:mod:`traitlens.store.finite`); one an older traitlens stored is named by ``verify``, never
picked, and naming it by id is refused. A NaN or infinite sort key (the agreement of a method
with no other, the stability of ``--n-boot 0``) sorts as NULL: last, never first (DuckDB sorts
NaN above every number).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .connection import QueryError, StoreSQL

if TYPE_CHECKING:
    from traitlens.store.store import Store

Record = dict[str, Any]  # one vectors (or metrics) row, as a dict

TIE_BREAK = ("cohens_d", "stability")
CORE_METRICS = ("auroc", "cohens_d")  # measured for every vector: NaN or infinite there means garbage
RULE = "held-out {by}, ties broken by held-out Cohen's d, then stability"
METRICS = ("auroc", "balanced_accuracy", "cohens_d", "separation", "stability", "agreement", "train_auroc",
           "steer_shift", "steering", "spec_precision", "spec_auroc")
ALIASES = {"steering": "steer_shift"}  # `rank --by steering`: the best shift within the KL budget


def latest_cells_sql() -> str:
    """The newest vector of every (group, layer, method) cell of one trait (bind the trait)."""
    return ("SELECT * FROM metrics WHERE trait = ? QUALIFY row_number() OVER (PARTITION BY model_key, fmt, site, "
            "pooling, layer, method ORDER BY created_at DESC) = 1")


def metric_column(by: str) -> str:
    """The ``metrics`` column a ``--by`` name sorts on (``steering`` is ``steer_shift``)."""
    return ALIASES.get(by, by)


def order_by(by: str = "auroc", prefix: str = "") -> str:
    """The SQL ORDER BY of the rule, for a metric from :data:`METRICS` (``prefix``: a table alias
    with its dot)."""
    if by not in METRICS:
        raise QueryError(f"--by {by!r}: rank by one of {', '.join(METRICS)}")
    by = metric_column(by)
    keys = [by] + [k for k in TIE_BREAK if k != by]
    return (", ".join(f"CASE WHEN isfinite({prefix}{k}) THEN {prefix}{k} END DESC NULLS LAST" for k in keys)
            + f", {prefix}layer")


def usable_sql(prefix: str = "") -> str:
    """The SQL condition a candidate's scalar columns meet (over ``metrics`` columns; ``prefix``:
    a table alias with its dot): finite core metrics and a finite, positive raw norm (NULL, not
    measured, is fine). Reads no vector values."""
    core = " AND ".join(f"({prefix}{k} IS NULL OR isfinite({prefix}{k}))" for k in CORE_METRICS)
    return f"{core} AND ({prefix}raw_norm IS NULL OR (isfinite({prefix}raw_norm) AND {prefix}raw_norm > 0))"


def usable(rec: Record) -> bool:
    """:func:`usable_sql` for a record in memory and, where it carries its ``vector``, its values:
    finite and not all zero (:func:`traitlens.store.finite.vector_problem`)."""
    from traitlens.store.finite import vector_problem

    if rec.get("vector") is not None and vector_problem(rec["vector"]) is not None:
        return False
    norm = rec.get("raw_norm")
    return (all(rec.get(k) is None or math.isfinite(rec[k]) for k in CORE_METRICS)
            and (norm is None or (math.isfinite(norm) and norm > 0)))


def sort_key(rec: Record, by: str = "auroc") -> tuple[float | int, ...]:
    """The rule as a Python sort key (ascending sorts best first), for records in memory; the
    same order as :func:`order_by` (a test holds them together)."""
    def neg(v: float | None) -> float:
        return math.inf if v is None or not math.isfinite(v) else -float(v)

    by = metric_column(by)
    keys = [by] + [k for k in TIE_BREAK if k != by]
    return tuple(neg(rec.get(k)) for k in keys) + (rec["layer"],)


def best_vector(q: StoreSQL, trait: str, model_key: str | None = None, layer: int | None = None,
                method: str | None = None, layers: tuple[int, int] | None = None, by: str = "auroc") -> Record | None:
    """The vector the rule picks for ``trait`` (a full vectors row), or None. Filters: a model
    key, one layer or an inclusive ``layers`` range, one method. The random baseline is never
    the pick, unless ``method="random"`` asks for it (the floor of a steering evaluation)."""
    cond = [usable_sql("m.")] + ([] if method == "random" else ["m.method <> 'random'"])
    params: list[str | int] = [trait]
    for column, value in (("model_key", model_key), ("layer", layer), ("method", method)):
        if value is not None:
            cond.append(f"m.{column} = ?")
            params.append(value)
    if layers is not None:
        cond.append("m.layer BETWEEN ? AND ?")
        params += [int(layers[0]), int(layers[1])]
    skipped: list[str] = []  # candidates whose values are not finite (checked here, on the one row read)
    while True:
        skip = [f"m.vector_id NOT IN ({', '.join('?' * len(skipped))})"] if skipped else []
        rows = q.query(f"SELECT v.* FROM ({latest_cells_sql()}) m JOIN vectors v USING (vector_id) WHERE "
                       + " AND ".join(cond + skip) + f" ORDER BY {order_by(by, 'm.')} LIMIT 1",
                       params + skipped).to_pylist()
        if not rows or usable(rows[0]):
            return dict(rows[0]) if rows else None
        skipped.append(rows[0]["vector_id"])


def chosen_vector(q: StoreSQL, trait: str | None, vector_id: str | None = None, **filters: Any) -> Record | None:
    """The vector with ``vector_id``; else the one :func:`best_vector` picks for ``trait``
    (``filters``: its model_key / layer / method). None when there is none."""
    if vector_id:
        rows = q.query("SELECT * FROM vectors WHERE vector_id = ?", [vector_id]).to_pylist()
        if rows and not usable(rows[0]):
            v = rows[0]
            raise QueryError(f"vector {vector_id} ({v['trait']} {v['method']} L{v['layer']}) holds NaN, infinite or "
                             "all-zero values, or a NaN held-out metric or norm (an older traitlens stored it): it cannot be "
                             f"used; `traitlens rank --trait {v['trait']}` lists the usable ones")
        return dict(rows[0]) if rows else None
    return best_vector(q, trait, **filters) if trait is not None else None


def named_vector(q: StoreSQL, name: str, model_key: str | None = None, layer: int | None = None,
                 method: str | None = None) -> Record | None:
    """The vector ``name`` names: a stored vector id, else the pick of the trait ``name`` (within
    ``model_key`` / ``layer`` / ``method``). None when there is none."""
    is_id = q.query("SELECT count(*) AS n FROM vectors WHERE vector_id = ?", [name]).to_pylist()[0]["n"]
    if is_id:
        return chosen_vector(q, None, name)
    return best_vector(q, name, model_key=model_key, layer=layer, method=method)


def best_per_method(records: list[Record], by: str = "auroc") -> dict[str, Record]:
    """``{method: the record the rule picks among that method's layers}`` for records in memory."""
    best: dict[str, Record] = {}
    for r in sorted(filter(usable, records), key=lambda r: sort_key(r, by)):
        best.setdefault(r["method"], r)
    return best


def held_out_texts(store: Store, trait: str, label: int, split: str, n: int | None = None) -> list[str]:
    """Plain-text prompts of ``trait`` with ``label`` in ``split`` (the vector's held-out split),
    in stored order, at most ``n``: what causal evaluations measure on."""
    texts: list[str] = [p["text"] for p in store.prompts().to_pylist()
             if p["trait"] == trait and p["label"] == label and p["split"] == split and p["text"]]
    return texts[:n] if n is not None else texts


def tie_note(rows: list[Record], by: str, n_held: int) -> str | None:
    """Say so when the held-out split cannot separate the top candidates on ``by``."""
    if len(rows) < 2 or rows[0].get(by) is None:
        return None
    tied = sum(1 for r in rows if r.get(by) == rows[0][by])
    if tied < 2:
        return None
    return (f"{tied} of the top {len(rows)} cells tie at {by} {rows[0][by]:.3f} on {n_held} held-out rows, so the "
            "tie-break decides; a larger val split (or --held-split test for a second opinion) would tell them apart")
