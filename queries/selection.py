"""The one way to pick "the vector to use" and "the held-out texts of a trait".

Every command that needs a vector (``rank``, ``steer``, ``monitor``, ``evaluate``), the workflow
runner, the demo and the benches pick through here, so they agree.

The rule: the newest vector of each (group, layer, method) cell is a candidate; candidates are
ordered by the held-out metric asked for (AUROC by default), ties broken by held-out Cohen's d
— which keeps separating candidates after AUROC saturates at 1.000 — then by stability, and only
then by layer (so that the order is total; never by layer alone). The random baseline is never
picked. :data:`RULE` says this in words; ``rank`` prints it.
"""

from __future__ import annotations

import math

from .connection import QueryError, StoreSQL

TIE_BREAK = ("cohens_d", "stability")
RULE = "held-out {by}, ties broken by held-out Cohen's d, then stability"
METRICS = ("auroc", "balanced_accuracy", "cohens_d", "separation", "stability", "agreement", "train_auroc",
           "steer_shift", "steering")
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
    return ", ".join(f"{prefix}{k} DESC NULLS LAST" for k in keys) + f", {prefix}layer"


def sort_key(rec: dict, by: str = "auroc") -> tuple:
    """The rule as a Python sort key (ascending sorts best first), for records in memory; the
    same order as :func:`order_by` (a test holds them together)."""
    def neg(v):
        return math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else -float(v)

    by = metric_column(by)
    keys = [by] + [k for k in TIE_BREAK if k != by]
    return tuple(neg(rec.get(k)) for k in keys) + (rec["layer"],)


def best_vector(q: StoreSQL, trait: str, model_key: str | None = None, layer: int | None = None,
                method: str | None = None, layers: tuple[int, int] | None = None, by: str = "auroc") -> dict | None:
    """The vector the rule picks for ``trait`` (a full vectors row), or None. Filters: a model
    key, one layer or an inclusive ``layers`` range, one method. The random baseline is never
    the pick, unless ``method="random"`` asks for it (the floor of a steering evaluation)."""
    cond, params = ([] if method == "random" else ["m.method <> 'random'"]), [trait]
    for column, value in (("model_key", model_key), ("layer", layer), ("method", method)):
        if value is not None:
            cond.append(f"m.{column} = ?")
            params.append(value)
    if layers is not None:
        cond.append("m.layer BETWEEN ? AND ?")
        params += [int(layers[0]), int(layers[1])]
    rows = q.query(f"SELECT v.* FROM ({latest_cells_sql()}) m JOIN vectors v USING (vector_id) WHERE "
                   + " AND ".join(cond) + f" ORDER BY {order_by(by, 'm.')} LIMIT 1", params).to_pylist()
    return rows[0] if rows else None


def chosen_vector(q: StoreSQL, trait: str, vector_id: str | None = None, **filters) -> dict | None:
    """The vector with ``vector_id``; else the one :func:`best_vector` picks for ``trait``
    (``filters``: its model_key / layer / method). None when there is none."""
    if vector_id:
        rows = q.query("SELECT * FROM vectors WHERE vector_id = ?", [vector_id]).to_pylist()
        return rows[0] if rows else None
    return best_vector(q, trait, **filters)


def best_per_method(records: list[dict], by: str = "auroc") -> dict[str, dict]:
    """``{method: the record the rule picks among that method's layers}`` for records in memory."""
    best: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: sort_key(r, by)):
        best.setdefault(r["method"], r)
    return best


def held_out_texts(store, trait: str, label: int, split: str, n: int | None = None) -> list[str]:
    """Plain-text prompts of ``trait`` with ``label`` in ``split`` (the vector's held-out split),
    in stored order, at most ``n``: what causal evaluations measure on."""
    texts = [p["text"] for p in store.prompts().to_pylist()
             if p["trait"] == trait and p["label"] == label and p["split"] == split and p["text"]]
    return texts[:n] if n is not None else texts


def tie_note(rows: list[dict], by: str, n_held: int) -> str | None:
    """Say so when the held-out split cannot separate the top candidates on ``by``."""
    if len(rows) < 2 or rows[0].get(by) is None:
        return None
    tied = sum(1 for r in rows if r.get(by) == rows[0][by])
    if tied < 2:
        return None
    return (f"{tied} of the top {len(rows)} cells tie at {by} {rows[0][by]:.3f} on {n_held} held-out rows, so the "
            "tie-break decides; a larger val split (or --held-split test for a second opinion) would tell them apart")
