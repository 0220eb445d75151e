"""Which (method, layer, alpha) settings a sweep measures, and measuring them.

A sweep measures a trait's stored vectors over methods x layers x alphas with one
:class:`.evaluate.Evaluator` (the unsteered measure computed once); what it measures and how it
picks is one :class:`~.settings.SweepConfig`, which the search reads. Grids of at most
``grid_max`` settings are measured whole (:func:`grid_search`); larger ones are searched with
Optuna's multi-objective TPE sampler (shift up, KL down) for ``trials`` settings
(:func:`optuna_search`), the detection pick measured at every alpha first so the search always
has it to compare against. The random direction is then measured at every setting on the
Pareto front and at the pick: the floor. With ``ablate``, each cell's vector is also projected
out (directional ablation), beside the random direction's. When the evaluator runs lm-eval
tasks (``capability``), each row carries their changes, the search minimises the worst fall as
a third objective, and the rows go to the ``capability`` table too. What the rows are judged by
is :mod:`.rule`; what they become in the tables and in words is :mod:`.records`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from traitlens.pipeline.steer.rule import detection_vs_steering, front, pick
from traitlens.pipeline.steer.settings import LAYERS_AROUND, SweepConfig, layers_around
from traitlens.queries import StoreSQL
from traitlens.queries.selection import best_vector, chosen_vector
from traitlens.store.errors import InputError


@dataclass
class SweepResult:
    """What a sweep measured: every row (the random floor's too) and the vectors behind them."""

    trait: str
    config: SweepConfig = field(default_factory=SweepConfig)  # what was asked (methods, layers, alphas, budgets, ...)
    rows: list[dict] = field(default_factory=list)  # Evaluator rows + method and vector_id
    vectors: dict[tuple[str, int], dict] = field(default_factory=dict)  # (method, layer) -> vectors row
    detection_pick: dict | None = None  # the vector the held-out ranking picks
    search: str = "grid"  # how the settings were chosen: grid | optuna (...)
    capability: object = None  # the evaluator's .capability.Capability, when lm-eval tasks were run
    methods: list[str] = field(default_factory=list)  # the methods and layers swept (the config's, resolved)
    layers: list[int] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # early stop: {method, layer, alpha, after: the row over the budget}
    device: str = ""  # where the model ran (the default layers depend on it)
    n_layers: int = 0  # the model's blocks

    @property
    def kl_budget(self) -> float:
        return self.config.kl_budget

    @property
    def capability_budget(self) -> float | None:
        """The worst capability fall the pick may have (None: any)."""
        return self.config.capability_budget

    @property
    def front(self) -> list[dict]:
        return front(self.rows)

    @property
    def pick(self) -> dict | None:
        return pick(self.rows, self.kl_budget, self.capability_budget)

    def correlation(self) -> tuple[float, int]:
        detection = {k: v.get("cohens_d") for k, v in self.vectors.items() if k[0] != "random"}
        return detection_vs_steering(self.rows, detection, self.kl_budget)

    def plan_lines(self, n_texts: int | None = None, n_neutral: int | None = None) -> list[str]:
        """What the sweep ran, in words, and the options that widen it: methods, layers, alphas,
        prompts, reply length, the settings measured and skipped, the device."""
        from traitlens.store.layout import format_layer_list

        cfg = self.config
        own = [r for r in self.rows if r["method"] != "random" and (r.get("operation") or "add") == "add"]
        floor = [r for r in self.rows if r["method"] == "random" and (r.get("operation") or "add") == "add"]
        alphas, device = ",".join(f"{a:g}" for a in cfg.alphas), self.device or "cpu"
        layers = format_layer_list(self.layers)
        width = layers_around(device)
        if cfg.layers is None:
            layers += (f" (the detection pick's{f' and {width} each side' if width else ''}: the default on {device}"
                       + (f"; {LAYERS_AROUND} each side on a GPU)" if width < LAYERS_AROUND else ")"))
        n = f"{n_texts} held-out prompts" if n_texts is not None else f"up to {cfg.n} held-out prompts"
        replies = (f"{cfg.reply_tokens}-token replies to {n_neutral or 'the'} neutral prompts" if cfg.reply_tokens
                   else "no replies (--reply-tokens 0)")
        out = [f"ran: {cfg.kind} on {n}; methods {','.join(self.methods)}; layers {layers}; alphas {alphas}; "
               f"{replies}; device {device}",
               f"measured {len(own)} settings ({self.search}) and {len(floor)} of the random floor"]
        if self.skipped:
            out[-1] += (f"; skipped {len(self.skipped)} by early stop (a smaller alpha's KL interval lies wholly "
                        f"above the {cfg.kl_budget:g}-nat budget): "
                        + ", ".join(f"{s['method']} L{s['layer']} a{s['alpha']:g} (after a{s['after']['alpha']:g}: "
                                    f"KL [{s['after']['kl_low']:.3g}, {s['after']['kl_high']:.3g}])"
                                    for s in self.skipped))
        pick = (self.detection_pick or {}).get("layer")
        wider = (f"--layers {format_layer_list(around(pick, self.n_layers))} (or all)"
                 if pick is not None and self.n_layers and width < LAYERS_AROUND else "--layers all")
        widen = ([wider] if cfg.layers is None else []) + (["--methods all"] if cfg.methods != "all" else [])
        widen += [f"--alphas {alphas},...", f"--n {2 * cfg.n}"] + (["--no-early-stop"] if cfg.early_stop else [])
        return out + [f"widen: {' '.join(widen)} (a grid of more than {cfg.grid_max} settings is searched: Optuna "
                      f"measures --trials {cfg.trials})"]

    def records(self, run_id: str) -> tuple[list[dict], list[dict]]:
        """(``steering`` rows, ``steering_samples`` rows) to append."""
        from traitlens.pipeline.steer.evaluate import steering_records

        agg, per = [], []
        for r in self.rows:
            a, p = steering_records(self.vectors[(r["method"], r["layer"])], [r], run_id)
            agg, per = agg + a, per + p
        return agg, per

    def capability_records(self, run_id: str) -> list[dict]:
        """``capability`` rows: the unsteered run, then every row's (none without lm-eval tasks)."""
        from traitlens.pipeline.steer.records import capability_records
        from traitlens.store.store import now_utc

        if self.capability is None:
            return []
        stamp, detail = now_utc(), self.capability.detail()
        out = capability_records(self.capability.unsteered_rows(), {"alpha": 0.0}, detail, run_id, stamp)
        for r in self.rows:
            v = self.vectors[(r["method"], r["layer"])]
            head = {"vector_id": v["vector_id"], "trait": v["trait"], "method": r["method"], "layer": r["layer"],
                    "alpha": r["alpha"], "operation": r.get("operation", "add")}
            out += capability_records(r.get("capability") or [], head, detail, run_id, stamp)
        return out

    def save(self, store, run_id: str, lock: bool = True) -> tuple[list[dict], list[dict]]:
        """Append the rows to the store (samples first: a steering row never lacks them; then the
        capability rows), under the writer lock unless the caller holds it (``lock=False``);
        returns what it appended to the two steering tables (:meth:`records`)."""
        from contextlib import nullcontext

        agg, per = self.records(run_id)
        with store.lock("evaluate") if lock else nullcontext():
            store.append("steering_samples", per)
            store.append("steering", agg)
            store.append("capability", self.capability_records(run_id))
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


def grid_search(cells: list[tuple[str, int]], cfg: SweepConfig, measured: Measurements, bar,
                skipped: list[dict] | None = None) -> str:
    """Measure every (cell, alpha of ``cfg.alphas``); returns how the settings were chosen.
    With ``cfg.early_stop`` each cell's alphas go in ascending size, one at a time, and once a
    row's KL interval lies wholly above ``cfg.kl_budget`` the larger alphas of that sign are
    skipped (:func:`early_stopped`): appended to ``skipped`` with the row that stopped them."""
    if not cfg.early_stop:
        for m, l in cells:
            measured.at(m, l, cfg.alphas)
            bar.update(len(cfg.alphas))
        return "grid"
    for m, l in cells:
        over: dict[bool, dict] = {}  # per sign of alpha: the row whose KL interval passed the budget
        for a in sorted(cfg.alphas, key=abs):
            if (a >= 0) in over:
                if skipped is not None:
                    skipped.append({"method": m, "layer": l, "alpha": a, "after": over[a >= 0]})
            else:
                (row,) = measured.at(m, l, [a])
                if early_stopped(row, cfg.kl_budget):
                    over[a >= 0] = {"alpha": a, "kl_low": row["kl_low"], "kl_high": row["kl_high"]}
            bar.update(1)
    return "grid"


def early_stopped(row: dict, kl_budget: float) -> bool:
    """Whether ``row``'s KL interval lies wholly above ``kl_budget``: a larger push along the same
    vector costs more (the KL grows with the push), so it cannot be the pick."""
    return row.get("kl_low") is not None and row["kl_low"] > kl_budget


def optuna_search(cells: list[tuple[str, int]], cfg: SweepConfig, measured: Measurements, first: dict | None,
                  bar) -> str:
    """Optuna's multi-objective TPE over (cell, alpha of ``cfg.alphas``): maximise shift, minimise
    KL (and, with lm-eval tasks, the worst capability fall), for ``cfg.trials`` settings (at most
    the grid's), seeded by ``cfg.seed``. A setting asked again is answered from what was measured;
    ``first`` (the detection pick's vectors row, when it is one of ``cells``) goes first, at
    every alpha. Returns how the settings were chosen."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    alphas, trials = cfg.alphas, cfg.trials
    methods = sorted({m for m, _ in cells})
    layers = sorted({l for _, l in cells})
    capable = getattr(measured.evaluator, "capability", None) is not None  # the worst fall: a third objective
    study = optuna.create_study(directions=["maximize", "minimize"] + (["minimize"] if capable else []),
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
        study.tell(t, [r["shift"], r["kl"]] + ([r["capability_fall"] or 0.0] if capable else []))
    return f"optuna TPE, {measured.settings_of_the_trait()} of {len(cells) * len(alphas)} settings"


def stored_methods(q: StoreSQL, trait: str, model_key: str) -> list[str]:
    """The methods with stored vectors of ``trait`` on ``model_key``, random left out, sorted."""
    return [r["method"] for r in q.query("SELECT DISTINCT method FROM metrics WHERE trait = ? AND model_key = ? "
                                         "AND method <> 'random' ORDER BY 1", [trait, model_key]).to_pylist()]


def around(layer: int, n_layers: int, width: int = LAYERS_AROUND) -> list[int]:
    """The default layers of a sweep: ``layer`` and ``width`` on each side, inside the model
    (``width``: :func:`~.settings.layers_around` the model's device)."""
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


def sweep_layers(cfg: SweepConfig, detection_pick: dict | None, n_layers: int, device="cpu") -> list[int]:
    """The layers ``cfg`` asks for in a model of ``n_layers``; None: around the detection pick's,
    :func:`~.settings.layers_around` ``device`` on each side."""
    from traitlens.pipeline.model.layers import parse_layers

    if cfg.layers is not None:
        return parse_layers(cfg.layers, n_layers)
    if detection_pick is None:
        raise InputError("no detection pick to sweep around: give --layers")
    return around(detection_pick["layer"], n_layers, layers_around(device))


def _vector(store, trait: str, model_key: str, method: str, layer: int) -> dict | None:
    with StoreSQL(store) as q:
        return chosen_vector(q, trait, None, model_key=model_key, layer=layer, method=method)


def sweep(store, trait: str, evaluator, cfg: SweepConfig | None = None, progress: bool = True,
          skip: set[str] = frozenset(), log=print, vectors: dict[tuple[str, int], dict] | None = None) -> SweepResult:
    """Measure ``trait``'s vectors over the methods x layers x alphas of ``cfg`` (a
    :class:`~.settings.SweepConfig`, validated here) with ``evaluator`` (an
    :class:`.evaluate.Evaluator`): every setting when the grid has at most ``cfg.grid_max``,
    else ``cfg.trials`` settings chosen by Optuna; then the random floor at the front and the
    pick (unless ``cfg.random_floor`` is off); then, with ``cfg.ablate``, each cell's vector
    ablated (:func:`ablations`). Cells without a stored vector are left out, saying so; so are
    cells whose vector id is in ``skip`` (already evaluated: a refresh measures only what
    changed). ``vectors``: ``{(method, layer): vectors row}`` to measure instead of the store's
    newest vector of each cell (a bundle's)."""
    from tqdm.auto import tqdm

    cfg = (cfg or SweepConfig()).validate()
    lm = evaluator.lm
    device = str(getattr(getattr(lm, "device", None), "type", None) or getattr(lm, "device", None) or "cpu")
    res = SweepResult(trait=trait, config=cfg, capability=getattr(evaluator, "capability", None), device=device,
                      n_layers=lm.n_layers)
    missing, done = [], 0
    with StoreSQL(store) as q:
        res.detection_pick = best_vector(q, trait, model_key=lm.key)
        res.methods = methods = sweep_methods(q, trait, lm.key, cfg)
        res.layers = layers = sweep_layers(cfg, res.detection_pick, lm.n_layers, device)
        for m in methods:
            for l in layers:
                if vectors is not None and (m, l) not in vectors:
                    continue  # (the cells given are the sweep)
                v = vectors[(m, l)] if vectors is not None else chosen_vector(q, trait, None, model_key=lm.key,
                                                                              layer=l, method=m)
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
            res.search = grid_search(cells, cfg, measured, bar, res.skipped)
        else:
            res.search = optuna_search(cells, cfg, measured, res.detection_pick, bar)
    finally:
        bar.close()
    res.rows = list(measured.rows.values())
    if cfg.random_floor:  # the floor where it decides something: the front and the pick
        wanted = {(r["layer"], r["alpha"]) for r in res.front + ([res.pick] if res.pick else [])}
        for l in sorted({l for l, _ in wanted}):
            if ("random", l) not in res.vectors:
                v = _vector(store, trait, lm.key, "random", l)
                if v is None:
                    log(f"note: no random vector at layer {l} (extract with --methods ...,random): no floor there")
                    continue
                res.vectors[("random", l)] = v
            todo = [a for a in sorted(a for k, a in wanted if k == l) if ("random", l, a) not in measured.rows]
            if todo:  # (a layer's alphas in one call)
                res.rows += measured.at("random", l, todo)
    if cfg.ablate:
        res.rows += ablations(store, trait, evaluator, res.vectors, cells, cfg.random_floor, log)
    return res


def ablations(store, trait: str, evaluator, vectors: dict[tuple[str, int], dict], cells: list[tuple[str, int]],
              random_floor: bool = True, log=print) -> list[dict]:
    """Each cell's vector projected out (:meth:`.evaluate.Evaluator.ablated`), and with
    ``random_floor`` the random direction of each of their layers the same way: a row each, with
    method and vector_id (``vectors`` gains the random rows it reads)."""
    rows = []
    for m, l in cells:
        rows.append({**evaluator.ablated(vectors[(m, l)]["vector"], l), "method": m,
                     "vector_id": vectors[(m, l)]["vector_id"]})
    for l in sorted({l for _, l in cells}) if random_floor else []:
        if ("random", l) not in vectors:
            v = _vector(store, trait, evaluator.lm.key, "random", l)
            if v is None:
                log(f"note: no random vector at layer {l}: no ablation floor there")
                continue
            vectors[("random", l)] = v
        rows.append({**evaluator.ablated(vectors[("random", l)]["vector"], l), "method": "random",
                     "vector_id": vectors[("random", l)]["vector_id"]})
    return rows


def evaluator_for(store, lm, trait: str, cfg: SweepConfig | None = None, judge=None, capability=None):
    """(the :class:`.evaluate.Evaluator` of ``trait`` with the measure ``cfg.kind`` on ``cfg.n``
    held-out texts, alpha in ``cfg.norm`` units; a line saying what it measures on).
    persona: held-out statements of the trait; refusal and refusal_first_token: held-out
    harmless requests; refusal_rate: greedy replies (``cfg.max_new_tokens``) to held-out harmful
    requests, judged by ``cfg.markers`` (default :data:`.evaluate.REFUSAL_MARKERS`) and the
    judge, with the damage read on held-out harmless requests unless ``cfg.neutral`` is given;
    expression: replies to the neutral prompts, read on the trait's detection pick and
    calibrated on held-out texts of both labels. ``cfg.kl``: which KL the damage is. ``judge``:
    a loaded :class:`.judge.Judge` (``cfg.judge`` names its model); ``capability``: the lm-eval
    tasks (``cfg.capability``) measured at every setting (:class:`.capability.Capability`), made
    by the caller, which has the model.
    :class:`~traitlens.store.errors.InputError` when the store lacks what the kind needs."""
    import numpy as np

    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS
    from traitlens.pipeline.steer.evaluate import REFUSAL_MARKERS, Evaluator
    from traitlens.pipeline.steer.expression import Expression
    from traitlens.queries.selection import held_out_texts

    cfg = (cfg or SweepConfig()).validate()
    kind, n, max_new_tokens, neutral, markers, kl = cfg.kind, cfg.n, cfg.max_new_tokens, cfg.neutral, cfg.markers, cfg.kl
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
        # trait statements or harmful requests (refusal_rate), or harmless requests (the other refusal kinds)
        want = 1 if kind in ("persona", "refusal_rate") else -1
        texts = held_out_texts(store, trait, want, detect["held_split"], n)
        if not texts:
            raise InputError(f"no held-out ({detect['held_split']}) prompts with label {want:+d} for {trait!r}")
        what = f"{kind}: {len(texts)} held-out ({detect['held_split']}) prompts with label {want:+d}"
        if kind == "refusal_rate":
            if neutral is None:  # heretic reads the damage on harmless requests
                neutral = held_out_texts(store, trait, -1, detect["held_split"], n)
                if not neutral:
                    raise InputError(f"--kind refusal_rate reads its KL on held-out ({detect['held_split']}) prompts "
                                     f"with label -1 (harmless requests); {trait!r} has none: give --prompts FILE")
                where = f"{len(neutral)} held-out ({detect['held_split']}) prompts with label -1"
            else:
                where = f"{len(neutral)} prompts from --prompts"
            what += (f", greedy replies of {max_new_tokens} tokens judged by {len(markers or REFUSAL_MARKERS)} "
                     f"refusal markers{' and the judge' if judge else ''}; KL ({kl}) on {where}")
    ev = Evaluator(lm, kind, texts, cfg.norm, neutral, cfg.seed, expression, judge, cfg.reply_tokens, kl,
                   {"markers": tuple(markers or REFUSAL_MARKERS), "max_new_tokens": max_new_tokens}, capability)
    return ev, what
