"""Which (method, layer, alpha) moves a trait most, for how much damage: the search and the pick.

A sweep measures a trait's stored vectors over methods x layers x alphas with one
:class:`.evaluate.Evaluator` (the unsteered measure computed once). Grids of at most
:data:`GRID_MAX` settings are measured whole; larger ones are searched with Optuna's
multi-objective TPE sampler (shift up, KL down) for ``trials`` settings, the detection pick
measured at every alpha first so the search always has it to compare against. The random
direction is then measured at every setting on the Pareto front and at the pick: the floor.

The rules, on steering rows (dicts with method, layer, alpha, shift, ci_low, ci_high, kl),
whether fresh or read back from the ``steering`` table:

- :func:`front`: the settings no other beats on both shift and KL;
- :func:`pick`: the largest shift whose mean KL stays within the budget
  (:data:`~traitlens.queries.selection.KL_BUDGET` by default; the README shows the sweeps
  it was chosen from);
- :func:`shown_to_steer`: the pick's interval lies above the random direction's at the same
  setting (overlap: "not shown to steer");
- :func:`detection_vs_steering`: Spearman's rank correlation, across the measured (method,
  layer) cells, of held-out Cohen's d against the best shift within the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from traitlens.queries import StoreSQL
from traitlens.queries.selection import KL_BUDGET, best_vector, chosen_vector

GRID_MAX = 40  # settings measured exhaustively up to this many; a larger grid is searched
TRIALS = 40  # settings the search measures by default
REPLY_TOKENS = 24  # length of the steered replies to neutral prompts that perplexity and distinct-2 read


def front(rows: list[dict]) -> list[dict]:
    """The trait's rows (random left out) on the Pareto front of (shift up, KL down), by KL."""
    from traitlens.pipeline.steer.stats import pareto_front

    own = [r for r in rows if r["method"] != "random" and r.get("kl") is not None]
    return [own[i] for i in pareto_front([r["shift"] for r in own], [r["kl"] for r in own])]


def pick(rows: list[dict], kl_budget: float = KL_BUDGET) -> dict | None:
    """The row with the largest shift among the trait's rows whose KL is within ``kl_budget``
    (ties: the lower KL); None when every row costs more."""
    within = [r for r in rows if r["method"] != "random" and r.get("kl") is not None and r["kl"] <= kl_budget]
    return max(within, key=lambda r: (r["shift"], -r["kl"])) if within else None


def floor_at(rows: list[dict], row: dict) -> dict | None:
    """The random direction's row at ``row``'s layer and alpha, if measured."""
    return next((r for r in rows if r["method"] == "random" and r["layer"] == row["layer"]
                 and r["alpha"] == row["alpha"]), None)


def shown_to_steer(row: dict, floor: dict | None) -> bool | None:
    """True when ``row``'s 95% interval lies wholly above the random floor's; None without a floor."""
    if floor is None or row.get("ci_low") is None or floor.get("ci_high") is None:
        return None
    return bool(row["ci_low"] > floor["ci_high"])


def best_within(rows: list[dict], kl_budget: float = KL_BUDGET) -> dict[tuple[str, int], dict]:
    """``{(method, layer): its row with the largest shift within the budget}`` (the trait's rows)."""
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
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


@dataclass
class SweepResult:
    """What a sweep measured: every row (the random floor's too) and the vectors behind them."""

    trait: str
    rows: list[dict] = field(default_factory=list)  # Evaluator rows + method and vector_id
    vectors: dict[tuple[str, int], dict] = field(default_factory=dict)  # (method, layer) -> vectors row
    detection_pick: dict | None = None  # the vector the held-out ranking picks
    search: str = "grid"  # how the settings were chosen: grid | optuna (...)
    kl_budget: float = KL_BUDGET

    @property
    def front(self) -> list[dict]:
        return front(self.rows)

    @property
    def pick(self) -> dict | None:
        return pick(self.rows, self.kl_budget)

    def correlation(self) -> tuple[float, int]:
        detection = {k: v.get("cohens_d") for k, v in self.vectors.items() if k[0] != "random"}
        return detection_vs_steering(self.rows, detection, self.kl_budget)

    def records(self, run_id: str) -> tuple[list[dict], list[dict]]:
        """(``steering`` rows, ``steering_samples`` rows) to append."""
        from traitlens.pipeline.steer.evaluate import steering_records

        agg, per = [], []
        for r in self.rows:
            a, p = steering_records(self.vectors[(r["method"], r["layer"])], [r], run_id)
            agg, per = agg + a, per + p
        return agg, per

    def save(self, store, run_id: str, lock: bool = True) -> tuple[list[dict], list[dict]]:
        """Append the rows to the store (samples first: a steering row never lacks them), under
        the writer lock unless the caller holds it (``lock=False``); returns what it appended
        (:meth:`records`)."""
        from contextlib import nullcontext

        agg, per = self.records(run_id)
        with store.lock("evaluate") if lock else nullcontext():
            store.append("steering_samples", per)
            store.append("steering", agg)
        return agg, per


def stored_methods(q: StoreSQL, trait: str, model_key: str) -> list[str]:
    """The methods with stored vectors of ``trait`` on ``model_key``, random left out, sorted."""
    return [r["method"] for r in q.query("SELECT DISTINCT method FROM metrics WHERE trait = ? AND model_key = ? "
                                         "AND method <> 'random' ORDER BY 1", [trait, model_key]).to_pylist()]


def around(layer: int, n_layers: int, width: int = 2) -> list[int]:
    """The default layers of a sweep: ``layer`` and ``width`` on each side, inside the model."""
    return [l for l in range(layer - width, layer + width + 1) if 0 <= l < n_layers]


def _vector(store, trait: str, model_key: str, method: str, layer: int) -> dict | None:
    with StoreSQL(store) as q:
        return chosen_vector(q, trait, None, model_key=model_key, layer=layer, method=method)


def sweep(store, trait: str, evaluator, methods: list[str], layers: list[int], alphas: list[float],
          kl_budget: float = KL_BUDGET, trials: int | None = None, grid_max: int = GRID_MAX,
          random_floor: bool = True, seed: int = 0, progress: bool = True, skip: set[str] = frozenset(),
          log=print) -> SweepResult:
    """Measure ``trait``'s vectors over ``methods`` x ``layers`` x ``alphas`` with ``evaluator``
    (an :class:`.evaluate.Evaluator`): every setting when the grid has at most ``grid_max``,
    else ``trials`` settings chosen by Optuna (default :data:`TRIALS`); then the random floor at
    the front and the pick. Cells without a stored vector are left out, saying so; so are cells
    whose vector id is in ``skip`` (already evaluated: a refresh measures only what changed)."""
    from tqdm.auto import tqdm

    lm = evaluator.lm
    res = SweepResult(trait=trait, kl_budget=kl_budget)
    missing, done = [], 0
    with StoreSQL(store) as q:
        res.detection_pick = best_vector(q, trait, model_key=lm.key)
        for m in methods:
            for l in layers:
                v = chosen_vector(q, trait, None, model_key=lm.key, layer=l, method=m)
                if v is None:
                    missing.append(f"{m} L{l}")
                elif v["vector_id"] in skip:
                    done += 1
                else:
                    res.vectors[(m, l)] = v
    if missing:
        log(f"note: no stored vector for {len(missing)} cells ({', '.join(missing[:6])}"
            f"{', ...' if len(missing) > 6 else ''}): left out of the sweep")
    if done and not res.vectors:
        return res  # every cell already evaluated
    cells = sorted(res.vectors, key=lambda k: (methods.index(k[0]), k[1]))
    if not cells:
        from traitlens.store.errors import InputError

        raise InputError(f"no stored vectors of {trait!r} on {lm.key} for methods {', '.join(methods)} at layers "
                         f"{layers}; `traitlens rank --trait {trait}` lists what is stored")
    measured: dict[tuple[str, int, float], dict] = {}

    def measure(m: str, l: int, chosen: list[float]) -> list[dict]:
        out = []
        for r in evaluator.at(res.vectors[(m, l)]["vector"], l, chosen):
            r.update(method=m, vector_id=res.vectors[(m, l)]["vector_id"])
            measured[(m, l, r["alpha"])] = r
            out.append(r)
        return out

    n_grid = len(cells) * len(alphas)
    bar = tqdm(total=n_grid if n_grid <= grid_max else (trials or TRIALS), desc=f"evaluate {trait}", unit="setting",
               disable=not progress or None, leave=False, dynamic_ncols=True)
    try:
        if n_grid <= grid_max:
            for m, l in cells:
                measure(m, l, alphas)
                bar.update(len(alphas))
        else:
            res.search = _search(res, cells, alphas, measure, measured, trials or TRIALS, seed, bar)
    finally:
        bar.close()
    res.rows = list(measured.values())
    if random_floor:  # the floor where it decides something: the front and the pick
        wanted = {(r["layer"], r["alpha"]) for r in res.front + ([res.pick] if res.pick else [])}
        for l, a in sorted(wanted):
            if ("random", l) not in res.vectors:
                v = _vector(store, trait, lm.key, "random", l)
                if v is None:
                    log(f"note: no random vector at layer {l} (extract with --methods ...,random): no floor there")
                    continue
                res.vectors[("random", l)] = v
            if ("random", l, a) not in measured:
                res.rows += measure("random", l, [a])
    return res


def _search(res: SweepResult, cells, alphas, measure, measured, trials: int, seed: int, bar) -> str:
    """Optuna's multi-objective TPE over (cell, alpha): maximise shift, minimise KL. A setting
    asked again is answered from what was measured; the detection pick goes first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods = sorted({m for m, _ in cells})
    layers = sorted({l for _, l in cells})
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    d = res.detection_pick
    if d is not None and (d["method"], d["layer"]) in res.vectors:
        for k in range(len(alphas)):
            study.enqueue_trial({"method": d["method"], "layer": layers.index(d["layer"]), "alpha": k})
    asked, target = 0, min(trials, len(cells) * len(alphas))
    while len({k for k in measured if k[0] != "random"}) < target and asked < 20 * target:
        asked += 1
        t = study.ask()
        m = t.suggest_categorical("method", methods)
        l = layers[t.suggest_int("layer", 0, len(layers) - 1)]  # ordinal: neighbouring layers behave alike
        a = alphas[t.suggest_int("alpha", 0, len(alphas) - 1)]
        if (m, l) not in res.vectors:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            continue
        if (m, l, a) not in measured:
            measure(m, l, [a])
            bar.update(1)
        r = measured[(m, l, a)]
        study.tell(t, [r["shift"], r["kl"]])
    n = len({k for k in measured if k[0] != "random"})
    return f"optuna TPE, {n} of {len(cells) * len(alphas)} settings"


def evaluator_for(store, lm, trait: str, kind: str, n: int = 40, norm: str = "typical",
                  neutral: list[str] | None = None, max_new_tokens: int = 32, judge=None,
                  reply_tokens: int | None = None, seed: int = 0):
    """(the :class:`.evaluate.Evaluator` of ``trait`` with measure ``kind``, a line saying what it
    measures on). persona: held-out statements of the trait; refusal kinds: held-out harmless
    requests; expression: replies to the neutral prompts, read on the trait's detection pick and
    calibrated on held-out texts of both labels. :class:`~traitlens.store.errors.InputError`
    when the store lacks what the kind needs."""
    import numpy as np

    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
    from traitlens.pipeline.steer.evaluate import Evaluator
    from traitlens.pipeline.steer.expression import Expression
    from traitlens.queries.selection import held_out_texts
    from traitlens.store.errors import InputError

    with StoreSQL(store) as q:
        detect = best_vector(q, trait, model_key=lm.key)
    if detect is None:
        raise InputError(f"no vector for trait {trait!r} on model {lm.key}; run `traitlens extract --trait {trait}` "
                         "with this --model")
    expression = None
    if kind == "expression":
        sides = [held_out_texts(store, trait, s, detect["held_split"], n) for s in (1, -1)]
        if not all(sides):
            raise InputError(f"--kind expression calibrates on held-out ({detect['held_split']}) texts of both labels; "
                             f"{trait!r} lacks one")
        unit = np.asarray(detect["vector"], np.float64)
        expression = Expression(unit / np.linalg.norm(unit), detect["layer"], max_new_tokens,
                                chat=detect["fmt"] == "chat").calibrate(lm, *sides)
        texts = list(neutral or NEUTRAL_PROMPTS)
        what = (f"expression: replies of {max_new_tokens} tokens to {len(texts)} neutral prompts, read on "
                f"{detect['method']} L{detect['layer']} ({detect['vector_id']}), calibrated on held-out texts")
    else:
        want = 1 if kind == "persona" else -1  # trait statements, or harmless requests (refusal kinds)
        texts = held_out_texts(store, trait, want, detect["held_split"], n)
        if not texts:
            raise InputError(f"no held-out ({detect['held_split']}) prompts with label {want:+d} for {trait!r}")
        what = f"{kind}: {len(texts)} held-out ({detect['held_split']}) prompts with label {want:+d}"
    ev = Evaluator(lm, kind, texts, norm, neutral, seed, expression, judge,
                   REPLY_TOKENS if reply_tokens is None else reply_tokens)
    return ev, what


def stored_rows(q: StoreSQL, trait: str, kind: str | None = None, samples: bool = False
                ) -> tuple[str | None, list[dict], list[dict]]:
    """(kind, rows, samples) of what the ``steering`` table holds for ``trait``'s current vectors
    (the newest vector of each cell; per setting its newest measurement), of one ``kind``
    (default: the one measured most, leaving out the loose ``refusal_first_token``; shifts of
    different kinds are in different units). ``samples``: also their ``steering_samples``."""
    from traitlens.queries.selection import latest_cells_sql

    rows = q.query(f"SELECT s.* FROM steering s JOIN ({latest_cells_sql()}) m USING (vector_id) "
                   "QUALIFY row_number() OVER (PARTITION BY s.vector_id, s.layer, s.alpha, s.kind "
                   "ORDER BY s.created_at DESC) = 1", [trait]).to_pylist()
    if kind is None:
        counts: dict[str, int] = {}
        for r in rows:
            if r["kind"] != "refusal_first_token":
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
    from traitlens.queries.selection import latest_cells_sql

    d = best_vector(q, trait)
    cells = q.query(f"SELECT method, layer, cohens_d FROM ({latest_cells_sql()})", [trait]).to_pylist()
    rho, n = detection_vs_steering(rows, {(c["method"], c["layer"]): c["cohens_d"] for c in cells}, kl_budget)
    return [f"detection pick: {d['method']} L{d['layer']} (held-out AUROC {d['auroc']:.3f}, Cohen's d "
            f"{d['cohens_d']:.2f})" if d else "detection pick: none",
            "steering " + pick_line(rows, kl_budget, kind),
            f"detection (held-out Cohen's d) against steering (best shift within KL {kl_budget:g}) across {n} "
            "(method, layer) cells: " + (f"Spearman {rho:+.2f}" if n >= 3 else "too few for a rank correlation (3 or more)")]
