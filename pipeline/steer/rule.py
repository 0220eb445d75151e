"""What counts as shown to steer: the rules a sweep's rows are judged by.

The rules, on steering rows (dicts with method, layer, alpha, shift, ci_low, ci_high, kl, and
``capability_fall`` where lm-eval tasks were run), whether fresh from a sweep (:mod:`.search`)
or read back from the ``steering`` table (:mod:`.records`). They judge pushes (``operation``
add, or none recorded); ablation rows are reported beside them, never picked:

- :func:`front`: the settings no other beats on both shift and KL (and on the capability fall,
  the third objective, where every setting has one);
- :func:`pick`: the largest shift whose mean KL stays within the budget
  (:data:`~traitlens.queries.budget.KL_BUDGET` by default; docs/steering.md shows the sweeps
  it was chosen from), and whose capability fall stays within ``capability_budget`` when one is
  given;
- :func:`shown_to_steer`: the pick's interval lies above the random direction's at the same
  setting (overlap: "not shown to steer");
- :func:`detection_vs_steering`: Spearman's rank correlation, across the measured (method,
  layer) cells, of held-out Cohen's d against the best shift within the budget.
"""

from __future__ import annotations

import math

from traitlens.pipeline.steer.stats import pareto_front, pareto_front_nd
from traitlens.queries.budget import KL_BUDGET


def pushed(rows: list[dict]) -> list[dict]:
    """The rows of pushes (``operation`` add, or none recorded), ablations left out."""
    return [r for r in rows if (r.get("operation") or "add") == "add"]


def front(rows: list[dict]) -> list[dict]:
    """The trait's push rows (random left out) on the Pareto front of (shift up, KL down), by KL;
    where every one has a ``capability_fall``, of (shift up, KL down, capability fall down)."""
    own = [r for r in pushed(rows) if r["method"] != "random" and r.get("kl") is not None]
    if own and all(r.get("capability_fall") is not None for r in own):
        return [own[i] for i in pareto_front_nd([r["shift"] for r in own], [r["kl"] for r in own],
                                                [r["capability_fall"] for r in own])]
    return [own[i] for i in pareto_front([r["shift"] for r in own], [r["kl"] for r in own])]


def pick(rows: list[dict], kl_budget: float = KL_BUDGET, capability_budget: float | None = None) -> dict | None:
    """The row with the largest shift among the trait's push rows whose KL is within
    ``kl_budget`` and, given ``capability_budget``, whose capability fall is measured and within
    it (ties: the lower KL); None when every row costs more."""
    within = [r for r in pushed(rows) if r["method"] != "random" and r.get("kl") is not None and r["kl"] <= kl_budget
              and (capability_budget is None or (r.get("capability_fall") is not None
                                                 and r["capability_fall"] <= capability_budget))]
    return max(within, key=lambda r: (r["shift"], -r["kl"])) if within else None


def floor_at(rows: list[dict], row: dict) -> dict | None:
    """The random direction's row at ``row``'s layer and alpha (and operation), if measured."""
    return next((r for r in rows if r["method"] == "random" and r["layer"] == row["layer"]
                 and r["alpha"] == row["alpha"] and (r.get("operation") or "add") == (row.get("operation") or "add")),
                None)


def shown_to_steer(row: dict, floor: dict | None) -> bool | None:
    """True when ``row``'s 95% interval lies wholly above the random floor's; None without a floor."""
    if floor is None or row.get("ci_low") is None or floor.get("ci_high") is None:
        return None
    return bool(row["ci_low"] > floor["ci_high"])


def best_within(rows: list[dict], kl_budget: float = KL_BUDGET) -> dict[tuple[str, int], dict]:
    """``{(method, layer): its row with the largest shift within the budget}`` (the trait's rows)."""
    out: dict[tuple[str, int], dict] = {}
    for r in pushed(rows):
        if r["method"] != "random" and r.get("kl") is not None and r["kl"] <= kl_budget:
            k = (r["method"], r["layer"])
            if k not in out or r["shift"] > out[k]["shift"]:
                out[k] = r
    return out


def detection_vs_steering(rows: list[dict], detection: dict[tuple[str, int], float],
                          kl_budget: float = KL_BUDGET) -> tuple[float, int]:
    """(Spearman's rho of held-out detection against the best shift within the budget, the number
    of (method, layer) cells it is over); rho is NaN under three cells."""
    from scipy.stats import spearmanr

    best = best_within(rows, kl_budget)
    cells = [k for k in best if detection.get(k) is not None and math.isfinite(detection[k])]
    if len(cells) < 3:
        return math.nan, len(cells)
    return float(spearmanr([detection[k] for k in cells], [best[k]["shift"] for k in cells]).statistic), len(cells)
