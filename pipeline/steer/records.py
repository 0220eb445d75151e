"""What the ``steering`` table holds for a trait, and measured settings in words.

- :func:`stored_rows`: the rows (and samples) of a trait's current vectors, read back by SQL,
  the same dicts a sweep (:mod:`.search`) makes, so the :mod:`.rule` functions judge either;
- :func:`describe`, :func:`front_line`, :func:`pick_line`, :func:`summary_lines`: the lines
  ``evaluate``, ``report`` and ``sql --steering`` print.
"""

from __future__ import annotations

from traitlens.pipeline.steer.rule import detection_vs_steering, floor_at, front, pick, shown_to_steer
from traitlens.queries import StoreSQL
from traitlens.queries.budget import KL_BUDGET
from traitlens.queries.selection import best_vector, latest_cells_sql
from traitlens.store.vocabulary import LOOSE_KIND


def stored_rows(q: StoreSQL, trait: str, kind: str | None = None, samples: bool = False
                ) -> tuple[str | None, list[dict], list[dict]]:
    """(kind, rows, samples) of what the ``steering`` table holds for ``trait``'s current vectors
    (the newest vector of each cell; per setting its newest measurement), of one ``kind``
    (default: the one measured most, leaving out the loose ``refusal_first_token``; shifts of
    different kinds are in different units). ``samples``: also their ``steering_samples``."""
    rows = q.query(f"SELECT s.* FROM steering s JOIN ({latest_cells_sql()}) m USING (vector_id) "
                   "QUALIFY row_number() OVER (PARTITION BY s.vector_id, s.layer, s.alpha, s.kind "
                   "ORDER BY s.created_at DESC) = 1", [trait]).to_pylist()
    if kind is None:
        counts: dict[str, int] = {}
        for r in rows:
            if r["kind"] != LOOSE_KIND:
                counts[r["kind"]] = counts.get(r["kind"], 0) + 1
        kind = max(counts, key=counts.get) if counts else None
    rows = [r for r in rows if r["kind"] == kind]
    found: list[dict] = []
    if samples and rows:
        keys = sorted({(r["vector_id"], r["run_id"]) for r in rows})
        found = q.query("SELECT s.* FROM steering_samples s JOIN (SELECT unnest(?) AS vector_id, unnest(?) AS run_id) k "
                        "USING (vector_id, run_id) WHERE s.kind = ?",
                        [[k[0] for k in keys], [k[1] for k in keys], kind]).to_pylist()
    return kind, rows, found


def describe(r: dict) -> str:
    """One measured setting in words: ``mean_diff L16 alpha 0.1: shift +0.980 [+0.911, +1.049], KL 0.0943``."""
    return (f"{r['method']} L{r['layer']} alpha {r['alpha']:g}: shift {r['shift']:+.3f} "
            f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], KL {r['kl']:.4f}")


def front_line(rows: list[dict]) -> str:
    return "Pareto front (shift up, KL down): " + ", ".join(
        f"{r['method']} L{r['layer']} a{r['alpha']:g} ({r['shift']:+.3f}, KL {r['kl']:.4f})" for r in front(rows))


def pick_line(rows: list[dict], kl_budget: float = KL_BUDGET, kind: str | None = None) -> str:
    """The pick in words, with the random floor at its setting and whether it is shown to steer."""
    p = pick(rows, kl_budget)
    if p is None:
        return f"pick: none: every setting costs more than the KL budget of {kl_budget:g} nats"
    line = (f"pick ({kind + ', ' if kind else ''}largest shift within KL {kl_budget:g}): {describe(p)}, "
            f"wrong way {p['wrong_way']:.0%}")
    f = floor_at(rows, p)
    if f is not None:
        line += (f"; random at the same setting {f['shift']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"
                 + ("" if shown_to_steer(p, f) else " — NOT shown to steer (its interval is not above random's)"))
    return line


def summary_lines(q: StoreSQL, trait: str, kind: str, rows: list[dict], kl_budget: float = KL_BUDGET) -> list[str]:
    """The detection pick and the steering pick side by side, the random floor at the pick, and
    the rank correlation of held-out detection (Cohen's d) against steering (the best shift
    within the budget) across the (method, layer) cells ``rows`` measured, as lines of text."""
    d = best_vector(q, trait)
    cells = q.query(f"SELECT method, layer, cohens_d FROM ({latest_cells_sql()})", [trait]).to_pylist()
    rho, n = detection_vs_steering(rows, {(c["method"], c["layer"]): c["cohens_d"] for c in cells}, kl_budget)
    return [f"detection pick: {d['method']} L{d['layer']} (held-out AUROC {d['auroc']:.3f}, Cohen's d "
            f"{d['cohens_d']:.2f})" if d else "detection pick: none",
            "steering " + pick_line(rows, kl_budget, kind),
            f"detection (held-out Cohen's d) against steering (best shift within KL {kl_budget:g}) across {n} "
            "(method, layer) cells: " + (f"Spearman {rho:+.2f}" if n >= 3 else "too few for a rank correlation (3 or more)")]
