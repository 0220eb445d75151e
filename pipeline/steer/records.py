"""What the ``steering`` table holds for a trait, and measured settings in words.

- :func:`stored_rows`: the rows (and samples) of a trait's current vectors, read back by SQL,
  the same dicts a sweep (:mod:`.search`) makes, so the :mod:`.rule` functions judge either
  (each with its ``capability_fall`` and ``capability`` rows where lm-eval tasks were run);
- :func:`describe`, :func:`front_line`, :func:`pick_line`, :func:`summary_lines`: the lines
  ``evaluate``, ``report`` and ``sql --steering`` print;
- :func:`refusal_lines`: a ``refusal_rate`` sweep in heretic's form (refusals per 100 beside the
  KL, adding and ablating); :func:`side_effects_lines`: the pick's capability changes beside its
  effect, its KL and the random floor's changes on the same tasks.
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
                   "QUALIFY row_number() OVER (PARTITION BY s.vector_id, s.layer, s.alpha, s.kind, "
                   "coalesce(s.operation, 'add') ORDER BY s.created_at DESC) = 1", [trait]).to_pylist()
    _with_capability(q, rows)
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


def _with_capability(q: StoreSQL, rows: list[dict]) -> None:
    """Give each steering row the ``capability`` rows of its setting and run (and its
    ``capability_fall``, :func:`.capability.worst_fall`), where lm-eval tasks were run."""
    if not rows:
        return
    found: dict[tuple, list[dict]] = {}
    for c in q.query("SELECT c.* FROM capability c JOIN (SELECT DISTINCT unnest(?) AS run_id) r USING (run_id)",
                     [sorted({r["run_id"] for r in rows})]).to_pylist():
        found.setdefault((c["vector_id"], c["layer"], c["alpha"], c["operation"] or "add", c["run_id"]), []).append(c)
    for r in rows:
        caps = found.get((r["vector_id"], r["layer"], r["alpha"], r.get("operation") or "add", r["run_id"]))
        if caps:
            r["capability"], r["capability_fall"] = caps, worst_fall(caps)


def setting(r: dict) -> str:
    """``mean_diff L16 alpha 0.1``, or ``mean_diff L16 ablated``."""
    how = "ablated" if r.get("operation") == "ablate" else f"alpha {r['alpha']:g}"
    return f"{r['method']} L{r['layer']} {how}"


def describe(r: dict) -> str:
    """One measured setting in words: ``mean_diff L16 alpha 0.1: shift +0.980 [+0.911, +1.049], KL 0.0943``
    (the KL's measure named when it is the first token's; the worst capability fall, where measured)."""
    kl = "first-token KL" if r.get("kl_measure") == "first-token" else "KL"
    fall = (f", capability fall {r['capability_fall']:.3f}" if r.get("capability_fall") is not None else "")
    return (f"{setting(r)}: shift {r['shift']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], {kl} {r['kl']:.4f}"
            + fall)


def front_line(rows: list[dict]) -> str:
    own = front(rows)
    third = bool(own) and all(r.get("capability_fall") is not None for r in own)
    return (f"Pareto front (shift up, KL down{', capability fall down' if third else ''}): "
            + ", ".join(f"{r['method']} L{r['layer']} a{r['alpha']:g} ({r['shift']:+.3f}, KL {r['kl']:.4f}"
                        + (f", fall {r['capability_fall']:.3f}" if third else "") + ")" for r in own))


def pick_line(rows: list[dict], kl_budget: float = KL_BUDGET, kind: str | None = None,
              capability_budget: float | None = None) -> str:
    """The pick in words, with the random floor at its setting and whether it is shown to steer."""
    p = pick(rows, kl_budget, capability_budget)
    within = f"KL {kl_budget:g}" + (f" and capability fall {capability_budget:g}" if capability_budget is not None else "")
    if p is None:
        return (f"pick: none: every setting costs more than the KL budget of {kl_budget:g} nats"
                + (f" or the capability budget of {capability_budget:g}" if capability_budget is not None else ""))
    line = (f"pick ({kind + ', ' if kind else ''}largest shift within {within}): {describe(p)}, "
            f"wrong way {p['wrong_way']:.0%}")
    f = floor_at(rows, p)
    if f is not None:
        line += (f"; random at the same setting {f['shift']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"
                 + ("" if shown_to_steer(p, f) else " — NOT shown to steer (its interval is not above random's)"))
    return line


def summary_lines(q: StoreSQL, trait: str, kind: str, rows: list[dict], kl_budget: float = KL_BUDGET,
                  capability_budget: float | None = None) -> list[str]:
    """The detection pick and the steering pick side by side, the random floor at the pick, and
    the rank correlation of held-out detection (Cohen's d) against steering (the best shift
    within the budget) across the (method, layer) cells ``rows`` measured, as lines of text;
    then the pick's side effects where lm-eval tasks were run (:func:`side_effects_lines`)."""
    d = best_vector(q, trait)
    cells = q.query(f"SELECT method, layer, cohens_d FROM ({latest_cells_sql()})", [trait]).to_pylist()
    rho, n = detection_vs_steering(rows, {(c["method"], c["layer"]): c["cohens_d"] for c in cells}, kl_budget)
    lines = [f"detection pick: {d['method']} L{d['layer']} (held-out AUROC {d['auroc']:.3f}, Cohen's d "
             f"{d['cohens_d']:.2f})" if d else "detection pick: none",
             "steering " + pick_line(rows, kl_budget, kind, capability_budget),
             f"detection (held-out Cohen's d) against steering (best shift within KL {kl_budget:g}) across {n} "
             "(method, layer) cells: " + (f"Spearman {rho:+.2f}" if n >= 3 else "too few for a rank correlation (3 or more)")]
    p = pick(rows, kl_budget, capability_budget)
    if p is not None and p.get("capability"):
        lines += side_effects_lines(p, floor_at(rows, p))
    return lines


def _change(c: dict | None) -> str:
    if c is None or c.get("change") is None:
        return "-"
    ci = ("" if c.get("change_low") is None or c["change_low"] != c["change_low"]
          else f" [{c['change_low']:+.3f}, {c['change_high']:+.3f}]")
    return f"{c['change']:+.3f}{ci}"


def side_effects_lines(p: dict, floor: dict | None) -> list[str]:
    """The side-effects table of the pick ``p`` (a row with its ``capability`` rows): each lm-eval
    task and metric unsteered, under the pick, the change with its 95% interval, and the random
    direction's change at the same setting (``floor``), so damage from the direction shows apart
    from damage by any push of that size; above it the pick's effect and KL. Markdown lines."""
    kl = "first-token KL" if p.get("kl_measure") == "first-token" else "KL"
    rand = {(c["task"], c["metric"]): c for c in (floor or {}).get("capability") or []}
    lines = [f"side effects of the pick ({setting(p)}): effect {p['shift']:+.3f} [{p['ci_low']:+.3f}, "
             f"{p['ci_high']:+.3f}], {kl} {p['kl']:.4f}"
             + (f"; random at the same setting: effect {floor['shift']:+.3f} [{floor['ci_low']:+.3f}, "
                f"{floor['ci_high']:+.3f}], {kl} {floor['kl']:.4f}" if floor else "; no random floor measured there"),
             "", "| task | metric | n | unsteered | pick | change [95% CI] | interval | random's change [95% CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for c in sorted(p["capability"], key=lambda c: (c["task"], c["metric"])):
        base = "-" if c.get("unsteered") is None else f"{c['unsteered']:.4f}"
        lines.append(f"| {c['task']} | {c['metric']} | {c.get('n') or '-'} | {base} | {c['value']:.4f} | "
                     f"{_change(c)} | {c.get('interval') or '-'} | {_change(rand.get((c['task'], c['metric'])))} |")
    return lines


def refusal_lines(rows: list[dict]) -> list[str]:
    """A ``refusal_rate`` sweep in heretic's form: refusals per 100 harmful requests unsteered and
    under each push and ablation (with the Wilson 95% interval of the rate), beside the KL and
    the measure it is (first-token, on the harmless requests)."""
    from traitlens.pipeline.steer.stats import wilson

    rows = [r for r in rows if r.get("kind") == "refusal_rate"]
    if not rows:
        return []

    def per100(rate: float, n: int) -> str:
        k = round(rate * n)
        lo, hi = wilson(k, n)
        return f"{100 * rate:.0f}/100 [{100 * lo:.0f}, {100 * hi:.0f}]" + (f" ({k} of {n})" if n != 100 else "")

    n = rows[0]["n"]
    kl = rows[0].get("kl_measure") or "all-positions"
    out = [f"refusals per 100 harmful requests, heretic's form (KL: {kl}, nats):",
           f"  unsteered: {per100(rows[0]['unsteered'], n)}"]
    order = sorted(rows, key=lambda r: (r.get("operation") == "ablate", r["method"] == "random", r["method"],
                                        r["layer"], r["alpha"] if r["alpha"] is not None else 0.0))
    where = lambda r: setting(r).removesuffix(" ablated")  # noqa: E731  (the first column says so)
    width = max(len(where(r)) for r in order)
    for r in order:
        out.append(f"  {'ablate' if r.get('operation') == 'ablate' else 'add':<6} {where(r):<{width}}  "
                   f"{per100(r['plus'], n):<18} KL {r['kl']:.4f} [{r['kl_low']:.4f}, {r['kl_high']:.4f}]")
    return out


def worst_fall(rows: list[dict]) -> float | None:
    """The largest fall of any metric in its good direction (a change against higher-is-better,
    or for the few metrics where lower is better, a rise), in the metric's own units; 0 when
    nothing fell; None without rows."""
    import numpy as np

    falls = [(-r["change"] if r.get("higher_is_better") is not False else r["change"])
             for r in rows if r.get("change") is not None and np.isfinite(r["change"])]
    return max([0.0] + falls) if falls else None


def capability_records(rows: list[dict], head: dict, detail: str, run_id: str, stamp) -> list[dict]:
    """``capability`` table rows of one setting's :meth:`Capability.measure` rows; ``head``:
    vector_id, trait, method, layer, alpha, operation (None for the unsteered model)."""
    import numpy as np

    def num(x):
        return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)

    return [{**head, **{k: r[k] for k in ("task", "metric", "n", "higher_is_better", "interval")},
             **{k: num(r[k]) for k in ("value", "stderr", "unsteered", "change", "change_low", "change_high")},
             "detail": detail, "run_id": run_id, "created_at": stamp} for r in rows]
