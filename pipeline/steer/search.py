"""Which (method, layer, alpha) settings a sweep measures, and measuring them.

A sweep measures a trait's stored vectors over methods x layers x alphas with one
:class:`.evaluate.Evaluator` (the unsteered measure computed once); what it measures and how it
picks is one :class:`~.settings.SweepConfig`, which the search reads. Grids of at most
``grid_max`` settings are measured whole (:func:`grid_search`); larger ones are searched with
Optuna's multi-objective TPE sampler (shift up, KL down) for ``trials`` settings
(:func:`optuna_search`), the detection pick measured at every alpha first so the search always
has it to compare against. The random direction is then measured at every setting on the
Pareto front and at the pick: the floor. What the rows are judged by is :mod:`.rule`; what
they become in the tables and in words is :mod:`.records`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from traitlens.pipeline.steer.rule import detection_vs_steering, front, pick
from traitlens.pipeline.steer.settings import LAYERS_AROUND, SweepConfig
from traitlens.queries import StoreSQL
from traitlens.queries.selection import best_vector, chosen_vector
from traitlens.store.errors import InputError


@dataclass
class SweepResult:
    """What a sweep measured: every row (the random floor's too) and the vectors behind them."""

    trait: str
    config: SweepConfig = field(default_factory=SweepConfig)  # what was asked (methods, layers, alphas, budget, ...)
    rows: list[dict] = field(default_factory=list)  # Evaluator rows + method and vector_id
    vectors: dict[tuple[str, int], dict] = field(default_factory=dict)  # (method, layer) -> vectors row
    detection_pick: dict | None = None  # the vector the held-out ranking picks
    search: str = "grid"  # how the settings were chosen: grid | optuna (...)
    methods: list[str] = field(default_factory=list)  # the methods and layers swept (the config's, resolved)
    layers: list[int] = field(default_factory=list)

    @property
    def kl_budget(self) -> float:
        return self.config.kl_budget

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


class Measurements:
    """What a sweep has measured: ``{(method, layer, alpha): row}``, each setting measured once
    by ``evaluator`` on the cell's stored vector (``vectors``: ``{(method, layer): vectors row}``)."""

    def __init__(self, evaluator, vectors: dict[tuple[str, int], dict]):
        self.evaluator, self.vectors = evaluator, vectors
        self.rows: dict[tuple[str, int, float], dict] = {}

    def at(self, method: str, layer: int, alphas: list[float]) -> list[dict]:
        """Measure the cell's vector at ``alphas``: a row each (the evaluator's, with method and vector_id)."""
        vec = self.vectors[(method, layer)]
        out = []
        for r in self.evaluator.at(vec["vector"], layer, alphas):
            r.update(method=method, vector_id=vec["vector_id"])
            self.rows[(method, layer, r["alpha"])] = r
            out.append(r)
        return out

    def settings_of_the_trait(self) -> int:
        """Settings measured on the trait's own vectors (the random floor's left out)."""
        return sum(1 for k in self.rows if k[0] != "random")


def grid_search(cells: list[tuple[str, int]], cfg: SweepConfig, measured: Measurements, bar) -> str:
    """Measure every (cell, alpha of ``cfg.alphas``); returns how the settings were chosen."""
    for m, l in cells:
        measured.at(m, l, cfg.alphas)
        bar.update(len(cfg.alphas))
    return "grid"


def optuna_search(cells: list[tuple[str, int]], cfg: SweepConfig, measured: Measurements, first: dict | None,
                  bar) -> str:
    """Optuna's multi-objective TPE over (cell, alpha of ``cfg.alphas``): maximise shift, minimise
    KL, for ``cfg.trials`` settings (at most the grid's), seeded by ``cfg.seed``. A setting asked
    again is answered from what was measured; ``first`` (the detection pick's vectors row, when
    it is one of ``cells``) goes first, at every alpha. Returns how the settings were chosen."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    alphas, trials = cfg.alphas, cfg.trials
    methods = sorted({m for m, _ in cells})
    layers = sorted({l for _, l in cells})
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True))
    if first is not None and (first["method"], first["layer"]) in cells:
        for k in range(len(alphas)):
            study.enqueue_trial({"method": first["method"], "layer": layers.index(first["layer"]), "alpha": k})
    asked, target = 0, min(trials, len(cells) * len(alphas))
    while measured.settings_of_the_trait() < target and asked < 20 * target:
        asked += 1
        t = study.ask()
        m = t.suggest_categorical("method", methods)
        l = layers[t.suggest_int("layer", 0, len(layers) - 1)]  # ordinal: neighbouring layers behave alike
        a = alphas[t.suggest_int("alpha", 0, len(alphas) - 1)]
        if (m, l) not in cells:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            continue
        if (m, l, a) not in measured.rows:
            measured.at(m, l, [a])
            bar.update(1)
        r = measured.rows[(m, l, a)]
        study.tell(t, [r["shift"], r["kl"]])
    return f"optuna TPE, {measured.settings_of_the_trait()} of {len(cells) * len(alphas)} settings"


def stored_methods(q: StoreSQL, trait: str, model_key: str) -> list[str]:
    """The methods with stored vectors of ``trait`` on ``model_key``, random left out, sorted."""
    return [r["method"] for r in q.query("SELECT DISTINCT method FROM metrics WHERE trait = ? AND model_key = ? "
                                         "AND method <> 'random' ORDER BY 1", [trait, model_key]).to_pylist()]


def around(layer: int, n_layers: int, width: int = LAYERS_AROUND) -> list[int]:
    """The default layers of a sweep: ``layer`` and ``width`` on each side, inside the model."""
    return [l for l in range(layer - width, layer + width + 1) if 0 <= l < n_layers]


def sweep_methods(q: StoreSQL, trait: str, model_key: str, cfg: SweepConfig) -> list[str]:
    """The methods ``cfg`` asks for: ``all`` is every stored one but random; a method without
    stored vectors of ``trait`` on ``model_key`` is an :class:`InputError` listing what is stored."""
    stored = stored_methods(q, trait, model_key)
    methods = stored if cfg.methods == "all" else list(cfg.methods)
    unknown = [m for m in methods if m not in stored]
    if unknown or not methods:
        asked = cfg.methods if isinstance(cfg.methods, str) else ",".join(cfg.methods)
        raise InputError(f"--methods {asked!r}: {trait!r} has no {', '.join(unknown) or 'methods'} vectors on "
                         f"{model_key}; stored: {', '.join(stored) or 'none'}")
    return methods


def sweep_layers(cfg: SweepConfig, detection_pick: dict | None, n_layers: int) -> list[int]:
    """The layers ``cfg`` asks for in a model of ``n_layers``; None: around the detection pick's."""
    from traitlens.pipeline.model.layers import parse_layers

    if cfg.layers is not None:
        return parse_layers(cfg.layers, n_layers)
    if detection_pick is None:
        raise InputError("no detection pick to sweep around: give --layers")
    return around(detection_pick["layer"], n_layers)


def _vector(store, trait: str, model_key: str, method: str, layer: int) -> dict | None:
    with StoreSQL(store) as q:
        return chosen_vector(q, trait, None, model_key=model_key, layer=layer, method=method)


def sweep(store, trait: str, evaluator, cfg: SweepConfig | None = None, progress: bool = True,
          skip: set[str] = frozenset(), log=print) -> SweepResult:
    """Measure ``trait``'s vectors over the methods x layers x alphas of ``cfg`` (a
    :class:`~.settings.SweepConfig`, validated here) with ``evaluator`` (an
    :class:`.evaluate.Evaluator`): every setting when the grid has at most ``cfg.grid_max``,
    else ``cfg.trials`` settings chosen by Optuna; then the random floor at the front and the
    pick (unless ``cfg.random_floor`` is off). Cells without a stored vector are left out,
    saying so; so are cells whose vector id is in ``skip`` (already evaluated: a refresh
    measures only what changed)."""
    from tqdm.auto import tqdm

    cfg = (cfg or SweepConfig()).validate()
    lm = evaluator.lm
    res = SweepResult(trait=trait, config=cfg)
    missing, done = [], 0
    with StoreSQL(store) as q:
        res.detection_pick = best_vector(q, trait, model_key=lm.key)
        res.methods = methods = sweep_methods(q, trait, lm.key, cfg)
        res.layers = layers = sweep_layers(cfg, res.detection_pick, lm.n_layers)
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
        raise InputError(f"no stored vectors of {trait!r} on {lm.key} for methods {', '.join(methods)} at layers "
                         f"{layers}; `traitlens rank --trait {trait}` lists what is stored")
    measured = Measurements(evaluator, res.vectors)
    n_grid = len(cells) * len(cfg.alphas)
    bar = tqdm(total=n_grid if n_grid <= cfg.grid_max else cfg.trials, desc=f"evaluate {trait}", unit="setting",
               disable=not progress or None, leave=False, dynamic_ncols=True)
    try:
        if n_grid <= cfg.grid_max:
            res.search = grid_search(cells, cfg, measured, bar)
        else:
            res.search = optuna_search(cells, cfg, measured, res.detection_pick, bar)
    finally:
        bar.close()
    res.rows = list(measured.rows.values())
    if cfg.random_floor:  # the floor where it decides something: the front and the pick
        wanted = {(r["layer"], r["alpha"]) for r in res.front + ([res.pick] if res.pick else [])}
        for l, a in sorted(wanted):
            if ("random", l) not in res.vectors:
                v = _vector(store, trait, lm.key, "random", l)
                if v is None:
                    log(f"note: no random vector at layer {l} (extract with --methods ...,random): no floor there")
                    continue
                res.vectors[("random", l)] = v
            if ("random", l, a) not in measured.rows:
                res.rows += measured.at("random", l, [a])
    return res


def evaluator_for(store, lm, trait: str, cfg: SweepConfig | None = None, judge=None):
    """(the :class:`.evaluate.Evaluator` of ``trait`` with the measure ``cfg.kind`` on ``cfg.n``
    held-out texts, alpha in ``cfg.norm`` units; a line saying what it measures on).
    persona: held-out statements of the trait; refusal kinds: held-out harmless requests;
    expression: replies of ``cfg.max_new_tokens`` to the neutral prompts, read on the trait's
    detection pick and calibrated on held-out texts of both labels. ``judge``: a loaded
    :class:`.judge.Judge` (``cfg.judge`` names its model; the caller loads it).
    :class:`~traitlens.store.errors.InputError` when the store lacks what the kind needs."""
    import numpy as np

    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
    from traitlens.pipeline.steer.evaluate import Evaluator
    from traitlens.pipeline.steer.expression import Expression
    from traitlens.queries.selection import held_out_texts

    cfg = (cfg or SweepConfig()).validate()
    kind, n, max_new_tokens, neutral = cfg.kind, cfg.n, cfg.max_new_tokens, cfg.neutral
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
    ev = Evaluator(lm, kind, texts, cfg.norm, neutral, cfg.seed, expression, judge, cfg.reply_tokens)
    return ev, what
