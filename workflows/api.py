"""The Python face, ``import traitlens as tl``: one function per verb, the one implementation.

``tl.Store.open(path)`` / ``tl.Store.create(path)`` open a store (it shows itself in a
notebook); ``tl.ingest``, ``tl.extract``, ``tl.rank``, ``tl.steer``, ``tl.evaluate``,
``tl.score``, ``tl.query`` and ``tl.export`` take the options of the command of the same name
as keyword arguments (``--max-new-tokens`` is ``max_new_tokens``) and return a result
(:mod:`.results`: ``to_arrow()``, ``to_pandas()``, a readable ``repr`` and HTML). Each stage's
keywords build its config (:class:`CaptureConfig`, :class:`ExtractConfig`,
:class:`SweepConfig`, :class:`ScoreConfig`), which may also be given whole as ``config``
(keywords then replace its fields); an unknown keyword or a bad value is an
:class:`~traitlens.store.errors.InputError` naming the option, raised before a model is
loaded or anything is written. The command line parses its options into the same configs and
calls these functions, so a command and its function write the same rows.

Nothing heavy is imported here: each function imports its stage when called (``import
traitlens`` never imports torch).
"""

from __future__ import annotations

import difflib
import reprlib
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from traitlens.pipeline.steer.settings import ALPHA, STEER_BATCH, STEER_TOKENS  # (torch-free: steer's defaults)
from traitlens.store import Store as _Store
from traitlens.store.errors import InputError
from traitlens.store.finite import check_float
from traitlens.store.location import write_text_atomically

from .results import (Evaluation, Exported, Extracted, Ingested, QueryResult, Ranking, Scored, Steered, Together,
                      Vector, store_facts, store_html, store_lines)

if TYPE_CHECKING:  # imported on first use (below): extraction's config imports scikit-learn
    from traitlens.pipeline.capture.corpus import ReadOptions
    from traitlens.pipeline.capture.settings import CaptureConfig, IngestConfig
    from traitlens.pipeline.extract.config import ExtractConfig, ScoreConfig
    from traitlens.pipeline.steer.settings import SweepConfig

__all__ = ["Store", "ingest", "extract", "rank", "steer", "evaluate", "score", "query", "export", "CaptureConfig",
           "IngestConfig", "ExtractConfig", "SweepConfig", "ScoreConfig", "ReadOptions", "Vector", "InputError"]


def __getattr__(name: str):
    """The stages' configs, imported when first asked for (extraction's imports scikit-learn)."""
    if name in ("CaptureConfig", "IngestConfig"):
        from traitlens.pipeline.capture import settings

        return getattr(settings, name)
    if name in ("ExtractConfig", "ScoreConfig"):
        from traitlens.pipeline.extract import config

        return getattr(config, name)
    if name == "SweepConfig":
        from traitlens.pipeline.steer.settings import SweepConfig

        return SweepConfig
    if name == "ReadOptions":
        from traitlens.pipeline.capture.corpus import ReadOptions

        return ReadOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Store(_Store):
    """A traitlens store (:class:`traitlens.store.Store`) that shows what it holds: ``repr`` and,
    in a notebook, its groups, traits, runs and sizes. ``Store.open(path)`` opens one (a folder
    or an fsspec URL); ``Store.create(path)`` makes a new one."""

    @classmethod
    def create(cls, root: str | Path, exist_ok: bool = False) -> "Store":
        """A new, empty store at ``root`` (an empty or missing folder); with ``exist_ok`` an existing
        store is opened instead of refused."""
        if _Store.exists(root) and not exist_ok:
            raise InputError(f"{root}: a traitlens store is already there; tl.Store.open({str(root)!r}) opens it "
                             "(or pass exist_ok=True)")
        return cls.open(root, create=True)

    def facts(self) -> dict:
        """What the store holds: groups, traits (prompts per label, vectors), newest runs, bytes on disk."""
        return store_facts(self)

    def __repr__(self) -> str:
        return "\n".join(store_lines(self.facts()))

    def _repr_html_(self) -> str:
        return store_html(self.facts())

    def vector(self, trait: str | None = None, *, vector_id: str | None = None, layer: int | None = None,
               method: str | None = None, model_key: str | None = None) -> Vector:
        """One stored vector: by ``vector_id``, else ``trait``'s pick (the vector ``rank`` lists first,
        within ``layer`` / ``method`` / ``model_key`` when given); with its logit-lens tokens and
        steering pick where those were measured."""
        from traitlens.pipeline.steer.records import stored_rows
        from traitlens.pipeline.steer.rule import pick
        from traitlens.queries import StoreSQL
        from traitlens.queries.selection import chosen_vector

        with StoreSQL(self) as q:
            row = chosen_vector(q, trait, vector_id, model_key=model_key, layer=layer, method=method)
            if row is None:
                raise InputError(f"no vector {vector_id!r}" if vector_id else
                                 f"no vector for trait {trait!r}; run `traitlens extract --trait {trait}` first")
            _, rows, _ = stored_rows(q, row["trait"])
            lens = q.query("SELECT token, direction, rank, logit FROM lens WHERE vector_id = ? AND run_id = "
                           "(SELECT run_id FROM lens WHERE vector_id = ? ORDER BY created_at DESC LIMIT 1) "
                           "ORDER BY direction, rank", [row["vector_id"], row["vector_id"]]).to_pylist()
        return Vector(row, lens, pick([r for r in rows if r["vector_id"] == row["vector_id"]]))


def _root(store):
    """A store argument (a :class:`Store`, a path or a URL) as the store's path."""
    from upath import UPath

    from traitlens.store.location import store_path

    if isinstance(store, _Store):
        return store.root
    if not isinstance(store, (str, PathLike, UPath)):
        raise InputError(f"store {reprlib.repr(store)}: give a path, a URL or a tl.Store")
    return store_path(store)


def _outside(store_root, path, option: str):
    """``path`` (an output file), refused when it would land inside the store or in a folder that
    does not exist (checked before any work)."""
    from traitlens.store.location import check_output_path

    if path is not None:
        check_output_path(path, store_root, option)
    return path


def configure(cls, config, options: dict, aliases: dict[str, str] | None = None, lists: tuple[str, ...] = ()):
    """``config`` (a ``cls``, copied; default ``cls()``) with ``options`` (keyword arguments named
    like the command's options, or ``aliases`` of them) set on it, validated. A string given for
    a field in ``lists`` is a comma list. An unknown keyword is an :class:`InputError` naming it."""
    from dataclasses import fields, replace

    aliases = aliases or {}
    names = {f.name for f in fields(cls)}
    if config is not None and not isinstance(config, cls):
        raise InputError(f"config: give a {cls.__name__}, got {type(config).__name__}")
    cfg = replace(config) if config is not None else cls()
    for key, value in options.items():
        name = aliases.get(key, key)
        if name not in names:
            known = sorted(names | set(aliases))
            near = difflib.get_close_matches(key, known, n=1)
            raise InputError(f"{key}={reprlib.repr(value)}: not an option of {cls.__name__}"
                             + (f"; did you mean {near[0]!r}?" if near else f"; options: {', '.join(known)}"))
        if name in lists and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        setattr(cfg, name, value)
    return cfg.validate()


def _count(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"--{name.replace('_', '-')} {reprlib.repr(value)}: must be an integer of at least {lo}")
    return value


def _finite(name: str, value, **bounds) -> float:
    """``value`` as a finite float (within ``bounds``), or an :class:`InputError` naming ``--name``."""
    return check_float(value, f"--{name.replace('_', '-')}", **bounds)


def _paths(corpus) -> list:
    """A corpus argument (a path, or a list of paths, folders or globs) as a list."""
    if isinstance(corpus, (str, PathLike)):
        return [corpus]
    return list(corpus or [])


# -- ingest --------------------------------------------------------------------------------------
def ingest(store, corpus, config=None, *, scheduler=None, progress: bool = True, log=None, lm=None,
           **options) -> Ingested:
    """Capture the activations of ``corpus`` (files, folders or globs) into the store: only what
    it lacks (``traitlens ingest``). Keywords: the capture settings
    (:class:`~traitlens.pipeline.capture.settings.CaptureConfig`: ``model``, ``site``/``sites``,
    ``layers``, ``pooling``/``poolings``, ``generate``, ``chat``, ``batch_size``, ...) and the
    corpus reading options (:class:`~traitlens.pipeline.capture.corpus.ReadOptions`:
    ``text_field``, ``label_field``, ``trait``, ``label``, ``dataset``, ``split``, ...).
    ``scheduler``: a Dask scheduler address (or Client) to shard the forward passes across;
    ``lm``: an already loaded model. A corpus and store left as the last run left them is
    answered from its receipt, without loading the model."""
    from dataclasses import fields

    from traitlens.pipeline.capture import receipts
    from traitlens.pipeline.capture.corpus import ReadOptions
    from traitlens.pipeline.capture.settings import CaptureConfig

    reading = {f.name for f in fields(ReadOptions)} | set(ReadOptions.ALIASES)  # (and the old spellings)
    read = {k: (str(options.pop(k)) if k == "label" and options[k] is not None else options.pop(k))
            for k in list(options) if k in reading}
    cfg = configure(CaptureConfig, config, options, aliases={"site": "sites", "pooling": "poolings"},
                    lists=("sites", "poolings"))
    opts = ReadOptions.from_options(read)
    root, paths = _root(store), _paths(corpus)
    digest = receipts.readable_digest(paths, opts)  # hashed once: for the receipt's check and the run's receipt
    seen = receipts.check(root, paths, opts, cfg, digest=digest) if digest else None  # before torch is imported
    if seen is not None:
        return Ingested(receipt=seen)
    from traitlens.pipeline.capture.ingest import ingest as run_ingest
    from traitlens.pipeline.runtime.cluster import dask_client

    # only an explicit scheduler ships the model to workers (DASK_SCHEDULER_ADDRESS is for extraction)
    with dask_client(scheduler, from_env=False) as client:
        res = run_ingest(root, paths, opts, cfg, lm=lm, progress=progress, log=log or (lambda *a: None),
                         client=client, digest=digest)
    return Ingested(result=res)


# -- extract -------------------------------------------------------------------------------------
def extract(store, trait: str, config=None, *, background=(), scheduler=None, progress: bool = False,
            **options) -> Extracted:
    """Fit ``trait``'s vectors at every stored layer with every method and store them with their
    held-out metrics (``traitlens extract``). Keywords: the
    :class:`~traitlens.pipeline.extract.config.ExtractConfig` fields (``methods``, ``layers``,
    ``model``, ``fmt``, ``site``, ``pooling``, ``where``, ``train_split``, ``held_split``,
    ``n_boot``, ``seed``, ``memory`` such as ``"2GB"``, ``params``), and the probe's ``C`` and
    ``penalty``. ``background``: unlabelled corpus files (ingested into the same group first): their
    train-split prompts join the negatives of mean_diff, probe and gradient, the rest give every
    vector an out-of-corpus specificity figure. ``scheduler``: a Dask scheduler address,
    ``threads`` or ``processes``."""
    from traitlens.pipeline.extract.config import ExtractConfig

    probe = {k: options.pop(k) for k in ("C", "penalty") if k in options}
    if probe:
        params = dict(options.get("params") or (config.params if config is not None else {}))
        options["params"] = {**params, "probe": {**params.get("probe", {}), **probe}}
    cfg = configure(ExtractConfig, config, options, aliases={"memory": "memory_budget"})
    from traitlens.pipeline.extract.jobs import extract as run_extract

    root, bg = _root(store), background_prompts(background)
    res = run_extract(root, trait, cfg=cfg, scheduler=scheduler, progress=progress, background=bg)
    return Extracted(Store.open(root), res, bg is not None)


def background_prompts(background) -> tuple[set[str], str] | None:
    """``(prompt ids, name)`` of the background corpus files (``extract``'s ``background``; a
    spec's ``[extract] background``), or None for none."""
    background = _paths(background)
    if not background:
        return None
    from traitlens.pipeline.capture.plan import read_corpus

    return {r.prompt_id for r in read_corpus(background)[0]}, ", ".join(map(str, background))


# -- rank ----------------------------------------------------------------------------------------
def rank(store, trait: str, by: str = "auroc", top: int = 10, *, plot=None) -> Ranking:
    """``trait``'s best (group, layer, method) cells by the held-out metric ``by`` (``traitlens
    rank``), with the random floor, the nuisance floors, flags, and the detection and steering
    picks side by side; ``plot``: also write the layers x methods heatmap there (a PNG)."""
    from traitlens.pipeline.extract.floors import floor_flag
    from traitlens.queries import StoreSQL
    from traitlens.queries.ranking import lens_summary
    from traitlens.queries.ranking import rank as run_rank

    root = _root(store)
    _count("top", top, 1)
    _outside(root, plot, "--plot")
    with StoreSQL(root) as q:
        best, floor = run_rank(q, trait, by, top)
        f = floor.to_pylist()[0] if floor.num_rows else None
        rows = best.to_pylist()
        random_auroc = f["auroc"] if f is not None else None
        flags = {r["vector_id"]: floor_flag(r, random_auroc) for r in rows}
        steering = _detection_and_steering(q, trait)
        lens = lens_summary(q.store).get(rows[0]["vector_id"])
    res = Ranking(Store.open(root), trait, by, best, f, flags, steering, lens)
    if plot:
        res.heatmap_path = res.heatmap(plot)
    return res


def _detection_and_steering(q, trait: str) -> list[str]:
    """The detection and steering picks side by side (nothing before `evaluate --steering` ran)."""
    from traitlens.pipeline.steer.records import stored_rows, summary_lines

    kind, rows, _ = stored_rows(q, trait)
    return summary_lines(q, trait, kind, rows) if rows else []


# -- steer ---------------------------------------------------------------------------------------
def steer(store, prompt=None, *, trait: str | None = None, add=(), alpha: float = ALPHA, file=None,
          batch_size: int = STEER_BATCH, model=None, layer: int | None = None, method: str | None = None,
          vector_id: str | None = None, site: str | None = None, positions: str | None = None,
          norm: str | None = None, condition: str | None = None, condition_threshold: float | None = None,
          ablate: bool = False, all_layers: bool = False, max_new_tokens: int = STEER_TOKENS, chat: bool | None = None,
          vector=None, lm=None, log=None, say=None) -> Steered:
    """Generate a reply to each prompt without and with the vector(s) (``traitlens steer``):
    ``trait`` (its pick) or ``vector_id`` pushed by ``alpha`` (units of the layer's mean token
    norm, ``norm``), or one push per ``add`` entry ``TRAIT_OR_ID[:LAYER[:ALPHA]]``; ``ablate``
    projects the direction out instead; ``condition`` pushes only prompts whose projection on
    that vector passes its threshold. ``prompt``: a string or a list; ``file``: one a line.
    ``vector``: a bundle folder (``traitlens bundle``) whose vector to steer with instead of the
    store's (its files' hashes checked first; ``vector_id`` / ``layer`` / ``method`` choose among
    several; ``model`` defaults to the one it records). ``say``: called with each line of the
    result's :attr:`~.results.Steered.head` (the pushes, the condition) as soon as it is known,
    before the replies are generated."""
    from traitlens.pipeline.model.generation import greedy_batch
    from traitlens.pipeline.steer.steering import ablation, generate_batch
    from traitlens.store.vocabulary import NAMED_SITES, NORMS, POSITIONS

    from .pushes import (bundle_vector, check_bundle_model, check_positions, condition as condition_of, load,
                         pick_vector, prompt_ids, pushes_for)

    site, positions, norm = site or NAMED_SITES[0], positions or POSITIONS[0], norm or NORMS[0]
    if site not in NAMED_SITES:
        raise InputError(f"--site {site!r}: use {', '.join(NAMED_SITES)}")
    if norm not in NORMS:
        raise InputError(f"--norm {norm!r}: use {' or '.join(NORMS)}")
    alpha = check_float(alpha, "--alpha", float32=True)
    _count("batch_size", batch_size, 1)
    _count("max_new_tokens", max_new_tokens, 1)
    if layer is not None:
        _count("layer", layer, 0)
    check_positions(positions)
    add = [add] if isinstance(add, str) else list(add or [])
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    if file:
        prompts += [line for line in Path(file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError("give a PROMPT or --file")
    chosen = None
    if vector:  # a bundle: its vector, checked, instead of the store's
        if add:
            raise InputError("--vector DIR steers with the bundle's vector; leave out --add")
        bundle, chosen = bundle_vector(vector, vector_id, layer, method)
        model = model if model is not None else bundle.model_spec()
    st = Store.open(_root(store)) if chosen is None or condition else None  # a bundle needs no store
    lm = lm or load(model, log)
    if chosen is not None:
        check_bundle_model(chosen, lm)
    seqs = [prompt_ids(lm, p, chat) for p in prompts]
    dec = lambda x: lm.tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    if ablate:
        if add or condition:
            raise InputError("--ablate takes one vector (--trait or --vector-id), without --add or --condition")
        vec = chosen if chosen is not None else pick_vector(st, trait, lm.key, layer, method, vector_id)
        where = None if all_layers else [vec["layer"] if layer is None else layer]
        applied = (f"vector {vec['vector_id']} ({vec['trait']}, {vec['method']}): ablated at {site} of "
                   + ("every layer" if all_layers else f"layer {where[0]}"))
    else:
        items = pushes_for(st, lm, add, trait, layer, method, vector_id, alpha, norm, site, positions, seqs, chosen)
        applied = "applied " + "; ".join(p.describe() for p in items)
    _say(say, [applied])
    passes, said = [True] * len(seqs), []
    if condition:
        passes, said = condition_of(st, lm, condition, condition_threshold, seqs, prompts)
        _say(say, said)
    rows = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b:b + batch_size]
        plain = greedy_batch(lm, chunk, max_new_tokens)
        if ablate:
            with ablation(lm, vec["vector"], where, site):
                steered = greedy_batch(lm, chunk, max_new_tokens)
        else:
            steered = generate_batch(lm, chunk, [p.only(passes[b:b + len(chunk)]) for p in items], max_new_tokens)
        rows += [{"prompt": prompts[b + k], "unsteered": dec(u), "steered": dec(s), "pushed": passes[b + k]}
                 for k, (u, s) in enumerate(zip(plain, steered))]
    return Steered(applied, rows, said)


# -- evaluate ------------------------------------------------------------------------------------
def evaluate(store, trait: str | None = None, config=None, *, model=None, lm=None, add=(), site: str | None = None,
             positions: str | None = None, plot=None, vector=None, progress: bool = True, log=None, say=None,
             **options):
    """Sweep method x layer x strength (``traitlens evaluate --steering``): how much steering along
    each of ``trait``'s vectors moves behaviour, with what interval, for how much damage (and,
    with ``capability`` tasks, the lm-eval scores' falls); the random direction at the front and
    the pick. Keywords: the :class:`~traitlens.pipeline.steer.settings.SweepConfig` fields
    (``kind``, ``methods``, ``layers``, ``alphas``, ``n``, ``norm``, ``kl``, ``kl_budget``,
    ``trials``, ``reply_tokens``, ``ablate``, ``capability``, ``judge``, ...). Returns an
    :class:`~.results.Evaluation` (rows in the ``steering`` table).

    With ``add`` (``TRAIT_OR_ID[:LAYER[:ALPHA]]`` entries) the given pushes are measured together
    instead, each alone beside them and as random directions (a :class:`~.results.Together`,
    rows in ``steering_together``); ``site`` and ``positions`` say where they push. ``vector``: a
    bundle folder whose vectors (and prompts) join the store and are measured (its trait, its
    methods unless ``methods`` is given, its layers; ``model`` defaults to the one it records).
    ``plot``: also write the figure there (a PNG; ``True``: ``evaluate-<trait>.png`` here).
    ``say``: called with each line of the result's ``head`` (the lm-eval tasks, what the measure
    is taken on) as soon as it is known, before the measuring starts."""
    from traitlens.pipeline.steer.search import evaluator_for, sweep, sweep_methods
    from traitlens.pipeline.steer.settings import SweepConfig
    from traitlens.queries import StoreSQL
    from traitlens.store import file_stem
    from traitlens.store.store import new_run_id
    from traitlens.store.vocabulary import METHOD_NAMES

    from .pushes import check_bundle_model, load

    methods_given = "methods" in options or (config is not None and config.methods is not None)
    add = [add] if isinstance(add, str) else list(add or [])
    cells, bundle = None, None
    if vector:  # a bundle: its vectors (and prompts) join the store, and the sweep measures them
        from .bundles import load as load_bundle

        if add or options.get("layers") is not None or (config is not None and config.layers is not None):
            raise InputError("--vector DIR measures the bundle's vectors at their layers; leave out --add and --layers")
        bundle = load_bundle(vector)
        if trait not in (None, bundle.trait):
            raise InputError(f"--trait {trait}: the bundle {vector} holds vectors of {bundle.trait!r}")
        trait, model = bundle.trait, model if model is not None else bundle.model_spec()
        cells = {(r["method"], int(r["layer"])): r for r in bundle.records}
        options["layers"] = sorted({l for _, l in cells})
        if not methods_given:
            options["methods"] = sorted({m for m, _ in cells})
    elif not trait:
        raise InputError("give --trait, or --vector DIR (a bundle)")
    cfg = configure(SweepConfig, config, options)
    if add and (cfg.layers is not None or cfg.methods != [METHOD_NAMES[0]]):
        raise InputError("--add measures the given pushes; leave out --layers and --methods (they choose a sweep)")
    if add and (cfg.capability or cfg.ablate):
        raise InputError(f"{'--capability' if cfg.capability else '--ablate'} goes with a sweep, not with --add")
    root = _root(store)
    if plot is True:
        plot = Path(f"evaluate-{file_stem(trait, 'trait')}.png")
    _outside(root, plot, "--plot")
    if bundle is not None:  # (once every option is checked)
        from .bundles import adopt

        adopt(root, bundle)
    st = Store.open(root)
    lm = lm or load(model, log)
    if cells is not None:
        check_bundle_model(next(iter(cells.values())), lm)
    if not add:  # what the sweep would refuse, before the evaluator's own calibration runs the model
        with StoreSQL(st) as q:
            sweep_methods(q, trait, lm.key, cfg)
    judge = None
    if cfg.judge:
        from traitlens.pipeline.steer.judge import Judge

        same = cfg.judge == (model or "default") or cfg.judge == lm.path  # rated outside any steering
        judge = Judge(lm if same else load(cfg.judge, log, "--judge"), trait, cfg.description)
    capability = None
    if cfg.capability:
        from traitlens.pipeline.steer.capability import Capability

        capability = Capability(lm, cfg.capability, cfg.capability_include, cfg.capability_limit)
        _say(say, [f"capability: {capability.describe()}, unsteered and at every setting"])
    evaluator, what = evaluator_for(st, lm, trait, cfg, judge, capability)
    _say(say, [what])
    if add:
        return _together(st, lm, trait, evaluator, what, add, site, positions, cfg.random_floor, plot, log, say)
    res = sweep(st, trait, evaluator, cfg, progress=progress, log=log or (lambda *a: None), vectors=cells)
    run_id = new_run_id("evaluate")
    stored, samples = res.save(st, run_id)
    from traitlens.pipeline.steer.records import refusal_lines, summary_lines

    with StoreSQL(st) as q:
        summary = summary_lines(q, trait, cfg.kind, res.rows, cfg.kl_budget, cfg.capability_budget)
    out = Evaluation(st, res, what, run_id, samples, len(evaluator.texts), bool(judge), summary, None, len(stored),
                     [f"judge: {len(evaluator.rejected)} answers rejected, e.g. {evaluator.rejected[0]}"]
                     if evaluator.rejected else [], refusal=refusal_lines(res.rows),
                     capability=(f"capability: {capability.describe()}, unsteered and at every setting"
                                 if capability else None),
                     stored_capability=(f", {len(res.capability_records(run_id))} in capability ({capability.runs} "
                                        "lm-eval runs)" if capability else ""), n_neutral=len(evaluator.neutral))
    if plot:
        out.plot = out.figure(plot)
    return out


def _say(say, lines: list[str]) -> None:
    """Each of ``lines`` to ``say`` (a function taking one line), where one was given."""
    for line in lines if say is not None else []:
        say(line)


def _together(st, lm, trait, evaluator, what, specs, site, positions, random_floor, plot, log,
              say=None) -> Together:
    """``evaluate --add ...``: the pushes measured together, alone and as random directions;
    stored in ``steering_together``."""
    from traitlens.pipeline.steer.together import measure_together, together_records
    from traitlens.store.store import new_run_id
    from traitlens.store.vocabulary import NAMED_SITES, POSITIONS

    from .pushes import check_positions, label, parse_add

    site, positions = site or NAMED_SITES[0], positions or POSITIONS[0]
    check_positions(positions)
    wanted = [parse_add(st, lm, spec, ALPHA, None) for spec in specs]
    items = [evaluator.push(vec["vector"], at, a, site, positions, label(vec)) for vec, at, a in wanted]
    _say(say, ["measuring together: " + "; ".join(p.describe() for p in items)])
    rows = measure_together(evaluator, items, random_floor, log=log or (lambda *a: None))
    short = [f"{v['trait']} L{at} {a:+g}" for v, at, a in wanted]
    names = ([" + ".join(short)] + (short if len(short) > 1 else [])  # the parts in measure_together's order
             + ([" + ".join(f"random L{at} {a:+g}" for _, at, a in wanted)] if random_floor else []))
    run_id = new_run_id("evaluate")
    records = together_records(trait, rows, items, [v for v, _, _ in wanted], run_id)
    with st.lock("evaluate --add"):
        st.append("steering_together", records)
    out = Together(st, trait, evaluator.kind, len(evaluator.texts), evaluator.kl, what, "; ".join(p.describe() for p in items),
                   rows, names, records, run_id)
    if plot:
        out.plot = out.figure(plot)
    return out


# -- score ---------------------------------------------------------------------------------------
def score(store, trait: str | None = None, corpus=(), config=None, *, output=None, background=(), vector=None,
          **options) -> Scored:
    """Score prompts on a trait vector (``traitlens score``): all of the vector's group, those of
    ``corpus`` files (captured first where the store lacks them, with the vector's model, site,
    pooling and layers), or ``where``; each (prompt, vector) is scored once, into the ``scores``
    table. Keywords: the :class:`~traitlens.pipeline.extract.config.ScoreConfig` fields
    (``vector_id``, ``where``, ``top``, ``model``, ``generate``). ``background``: unlabelled
    corpus files of ordinary prompts (captured first where needed): every listed score also gets
    its percentile among theirs. ``vector``: a bundle folder whose vector scores (it joins the
    store). ``output``: write the listed rows there as JSONL."""
    from traitlens.pipeline.extract.config import ScoreConfig
    from traitlens.pipeline.extract.scoring import score as run_score
    from traitlens.store import strict_json

    cfg = configure(ScoreConfig, config, options)
    root, paths, background = _root(store), _paths(corpus), _paths(background)
    _outside(root, output, "-o")
    if vector:  # a bundle: its vector, checked, joins the store and scores like a stored one
        from dataclasses import replace

        from .bundles import adopt, load as load_bundle

        b = load_bundle(vector)
        if trait not in (None, b.trait):
            raise InputError(f"--trait {trait}: the bundle {vector} holds vectors of {b.trait!r}")
        chosen = b.choose(cfg.vector_id)[0]
        adopt(root, b, [chosen])
        trait = b.trait
        cfg = replace(cfg, vector_id=chosen["vector_id"], model=cfg.model if cfg.model is not None else b.model_spec())
    elif not trait:
        raise InputError("give --trait, or --vector DIR (a bundle)")
    if cfg.generate and not paths:
        raise InputError("--generate needs CORPUS files: their chats' given replies are compared with the model's")
    ids, pairs, before = None, None, []
    if paths:
        records, ids, vec = _captured(root, trait, cfg, paths, "CORPUS", before)
        if cfg.generate:
            from .screening import own_replies

            rep = own_replies(root, vec, records, cfg.generate, cfg.model)
            pairs = rep.pairs
            ids |= set(pairs.values())
            before.append(f"replies: {rep.n_generated} generated ({rep.n_empty} empty), {len(pairs)} pairs in all"
                          + (f"; {rep.n_without_reply} records end without an assistant reply" if rep.n_without_reply
                             else ""))
    bg_ids = None
    if background:
        _, bg_ids, _ = _captured(root, trait, cfg, background, "background", before)
        if ids is not None:
            ids |= bg_ids
    res = run_score(root, trait, cfg.vector_id, ids, cfg.where)
    bg_sorted = None
    if bg_ids is not None:
        import numpy as np

        from traitlens.pipeline.extract.scoring import background_scores

        bg_sorted = background_scores(_Store.open(root), res.vector["vector_id"], bg_ids)
        if len(bg_sorted) == 0:
            raise InputError("--background: none of its prompts is scored on this vector (the --where condition left "
                             "them out?)")
        before.append(f"background: {len(bg_sorted)} prompts; their 99th percentile is score "
                      f"{float(np.quantile(bg_sorted, 0.99)):.4g} (bg.pct 0.99): a prompt above it scores higher than "
                      "99% of ordinary prompts")
    out, listed = Scored(res, before, background=bg_sorted is not None), False
    if pairs is not None:
        out.top, out.diff_lines = _projection_diffs(root, res.vector, pairs, cfg.generate, cfg.top)
        listed = out.diff_lines != [NO_PAIRS]
    elif cfg.top:
        out.top, listed = _top_scores(root, res.vector, cfg.top, bg_sorted), True
    if output and listed:
        write_text_atomically(output, "".join(strict_json.dumps(r, default=str) + "\n" for r in out.top))
        out.output = Path(output)
    return out


def _captured(root, trait: str, cfg, paths: list, what: str, said: list[str]):
    """(records, their prompt ids, the vector) of corpus ``paths``, captured first into the
    vector's group where the store lacks them (a line saying so appended to ``said``)."""
    from traitlens.pipeline.capture.plan import read_corpus
    from traitlens.pipeline.extract.audit import chosen_vector, vector_group
    from traitlens.store.layout import format_layer_list

    from .screening import capture_missing

    st = _Store.open(root)
    records, _ = read_corpus(list(paths), store=st)  # splits as the capture below gives them
    ids = {r.prompt_id for r in records}
    vec = chosen_vector(st, trait, cfg.vector_id)
    cap = capture_missing(root, vec, list(paths), ids, cfg.model)
    if cap is not None:
        layers = format_layer_list(_Store.open(root).layers(vector_group(vec)))
        said.append(f"captured {cap.n_captured} {what} prompts the store lacked ({vector_group(vec).path}, layers "
                    f"{layers}) before scoring")
    return records, ids, vec


NO_PAIRS = "projection difference: no pair is scored"


def _top_scores(root, v: dict, top: int, background=None) -> list[dict]:
    """The ``top`` highest scores; with ``background`` (sorted background scores) each one's
    percentile among them too (``background_percentile``)."""
    from traitlens.queries import StoreSQL

    with StoreSQL(root) as q:
        best = q.query("SELECT prompt_id, score, calibrated, percentile, text, prompt_trait AS trait, label "
                       "FROM scored WHERE vector_id = ? ORDER BY score DESC LIMIT ?", [v["vector_id"], top]).to_pylist()
    if background is not None and best:
        from traitlens.pipeline.extract.scoring import background_percentile

        for r, pct in zip(best, background_percentile(background, [r["score"] for r in best])):
            r["background_percentile"] = float(pct)
    return best


def _projection_diffs(root, v: dict, pairs: dict, generate: int, top: int) -> tuple[list[dict], list[str]]:
    """(the ``top`` pairs whose given reply sits farthest above the model's own, the lines saying
    so: the mean difference with its 95% interval, and those pairs)."""
    import json

    import numpy as np
    import pyarrow as pa

    from traitlens.queries import StoreSQL

    with StoreSQL(root) as q:
        q.con.register("__asked", pa.table({"prompt_id": list(pairs)}))
        rows = q.query("SELECT d.prompt_id, d.diff, d.calibrated_diff, d.dataset_score, d.reply_score, d.reply, "
                       "p.messages FROM projection_diffs d JOIN __asked USING (prompt_id) "
                       "LEFT JOIN (SELECT prompt_id, any_value(messages) AS messages FROM prompts "
                       "WHERE prompt_id IN (SELECT prompt_id FROM __asked) GROUP BY prompt_id) p "
                       "USING (prompt_id) WHERE d.vector_id = ? AND d.model_key = ? AND d.generate = ? "
                       "ORDER BY d.diff DESC", [v["vector_id"], v["model_key"], generate]).to_pylist()
    if not rows:
        return [], [NO_PAIRS]
    diff = np.asarray([r["calibrated_diff"] for r in rows])
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    lines = [f"projection difference (dataset reply minus the model's own, calibrated units) over {len(rows)} "
             f"pairs: mean {diff.mean():+.3f} (95% CI {diff.mean() - half:+.3f} to {diff.mean() + half:+.3f}), "
             f"{np.mean(diff > 0):.0%} above the model's own"]
    best = rows[:top]
    if best:
        lines.append(f"{'diff':>7}  dataset reply | the model's own (largest differences first)")
    for r in best:
        given = json.loads(r["messages"])[-1]["content"] if r["messages"] else ""
        lines.append(f"{r['calibrated_diff']:>+7.2f}  {' '.join(given.split())[:60]} | "
                     f"{' '.join(str(r['reply']).split())[:40]}")
    return best, lines


# -- query ---------------------------------------------------------------------------------------
def query(store, sql: str, timeout: float = 3600) -> QueryResult:
    """Run read-only SQL over the store (``traitlens query``). Views: prompts, rows, runs, vectors,
    metrics, groups, act_L<layer> (activations, streamed), macro nearest(vector_id, k)."""
    from traitlens.queries import StoreSQL

    _finite("timeout", timeout, min=0, min_open=True)
    with StoreSQL(_root(store)) as q:
        return QueryResult(q.query(sql, timeout=timeout), sql)


# -- export --------------------------------------------------------------------------------------
def export(store, trait: str, format: str = "safetensors", *, method: str = "mean_diff", layers="all", model=None,
           alpha: float | None = None, norm: str | None = None, scale: float = 1.0, model_hint: str | None = None,
           device: str = "auto", output=None, bundle=None, log=None) -> Exported:
    """Write one trait's directions, one per layer, with the vector card (``traitlens export
    --format safetensors | gguf | easysteer``): safetensors, or a GGUF control vector for
    llama.cpp / repeng (no layer 0) or EasySteer (every layer). The card carries each layer's
    held-out metrics, its steering pick where evaluated and its mean token norm where the model
    is on this machine (with ``alpha``: the llama.cpp strength). ``output``: the file [default:
    ``<trait>-<method>.<ext>`` here]. ``bundle``: (a bundle's vector rows, their steering picks)
    to write instead of the store's (``export --vector DIR``). (Weight exports, ``--format
    merged | peft``, are the command line's.)"""
    from traitlens.pipeline.extract.export import (LAYER0_NOTE, gguf_records, latest_per_layer, llama_cpp_lines,
                                                   to_gguf, to_safetensors, vector_card)
    from traitlens.pipeline.model.layers import parse_layers
    from traitlens.store import file_stem
    from traitlens.store.layout import format_layer_list
    from traitlens.store.vocabulary import NORMS

    norm = norm or NORMS[0]
    if format not in ("safetensors", "gguf", "easysteer"):
        raise InputError(f"--format {format!r}: tl.export writes safetensors, gguf or easysteer (merged and peft: "
                         "`traitlens export`)")
    if norm not in NORMS:
        raise InputError(f"--norm {norm!r}: use {' or '.join(NORMS)}")
    if alpha is not None:
        alpha = check_float(alpha, "--alpha", float32=True)
    scale = _finite("scale", scale, nonzero=True, float32=True)
    root = _root(store)
    if bundle is None:
        rows = [r for r in Store.open(root).table("vectors").to_pylist() if r["trait"] == trait and r["method"] == method]
    else:  # (a bundle needs no store)
        rows = [r for r in bundle[0] if r["method"] == method]
    if not rows:
        raise InputError(f"no {method} vectors for trait {trait!r}; run `traitlens extract --trait {trait}`")
    lm = None
    if model and any(r["model_key"].startswith(model) for r in rows):  # a stored key or its prefix
        rows = [r for r in rows if r["model_key"].startswith(model)]
    elif model:  # a checkpoint: its key chooses the vectors
        lm = load_for_export(model, device, log)
        rows = [r for r in rows if r["model_key"] == lm.key]
        if not rows:
            raise InputError(f"no {method} vectors for trait {trait!r} of {lm.key} (what --model {model} loads)")
    groups = sorted({(r["model_key"], r["fmt"], r["site"], r["pooling"]) for r in rows})
    if len(groups) > 1:
        raise InputError(f"vectors of several groups match: {groups}; pass --model")
    if layers != "all":
        keep = set(parse_layers(layers, max(r["layer"] for r in rows) + 1))
        rows = [r for r in rows if r["layer"] in keep]
    rows = latest_per_layer(rows)
    notes = {}
    if format != "safetensors":
        rows, dropped = gguf_records(rows, easysteer=format == "easysteer")  # an InputError for layer 0 alone
        if dropped:
            notes["layer 0"] = LAYER0_NOTE
    out = Path(_outside(root, output or f"{file_stem(trait, 'trait')}-{file_stem(method, 'method')}."
                        f"{'safetensors' if format == 'safetensors' else 'gguf'}", "-o"))
    norms, hint = None, model_hint
    why = None if lm is not None else _loadable_model(model, rows[0]["model_key"])
    if why is None:
        from traitlens.pipeline.steer.weight_export import layer_norms, norm_source

        lm = lm or load_for_export(model, device, log)
        if lm.key != rows[0]["model_key"]:
            why = f"the vectors are of model {rows[0]['model_key']}; --model {model or 'default'} loads {lm.key}"
        else:
            norms = layer_norms(lm, [r["layer"] for r in rows], norm)
            notes["norm"] = norm_source(norm)
            hint = hint or lm.model.config.model_type
    if why is not None:
        notes["norm"] = f"not measured: {why}"
    if hint is None:
        hint = "llama"
        if format != "safetensors":
            notes["model_hint"] = "llama: the model's config was not read (pass --model, or --model-hint)"
    picks = _steering_picks(root, trait, {r["vector_id"] for r in rows}) if bundle is None else bundle[1]
    card = vector_card(rows, scale, picks, norms, alpha if norms is not None else None, notes)
    if format == "safetensors":
        to_safetensors(rows, out, scale, card)
    else:
        to_gguf(rows, out, hint, scale, card, easysteer=format == "easysteer")
    evaluated = sum("steering" in v for v in card["layers"].values())
    said = [f"wrote {out} ({len(rows)} layers: {format_layer_list([r['layer'] for r in rows])}; {method}, scale "
            f"{scale}); card: model {card['model_key']}, {card['site']}/{card['pooling']}, held-out metrics"
            + (f", steering picks of {evaluated} layers" if evaluated else "")
            + (f"; controlvector.model_hint {hint}" if format != "safetensors" else "")]
    if "layer 0" in notes:
        said.append(f"note: {LAYER0_NOTE}")
    if norms is None:
        said.append(f"per-layer norms {notes['norm']}")
    elif alpha is None:
        said.append("per-layer mean token norms are in the card; pass --alpha A for the llama.cpp strength of a "
                    "traitlens alpha (alpha x norm / scale)")
    elif format != "safetensors":
        said.append(f"llama.cpp, alpha {alpha:g} (strength = alpha x the layer's mean token norm / scale {scale:g}); "
                    "one layer at a time, as traitlens steers:")
        said += [f"  L{layer} (norm {entry['norm']:.4g}): {line}"
                 for line, (layer, entry) in zip(llama_cpp_lines(out, card), card["layers"].items())]
    else:
        said.append(f"steering-vectors multiplier for alpha {alpha:g} (alpha x norm / scale), per layer: "
                    + ", ".join(f"L{l} {e['llama_cpp_strength']:.4g}" for l, e in card["layers"].items()))
    return Exported(out, card, said)


def load_for_export(model, device, log=None):
    """The model an export measures norms on or writes weights of: float32, on ``device``."""
    from traitlens.pipeline.model.loading import load_model

    return load_model(model, device=device, dtype="float32", log=log or (lambda *a: None))


def _loadable_model(spec: str | None, model_key: str) -> str | None:
    """Why ``spec`` cannot give ``model_key``'s norms without a download or a wasted load, or None
    when it may (the default model or a checkpoint on this machine whose name the key carries)."""
    from traitlens.pipeline.model.identity import DEFAULT_MODEL, checkpoint_folder, default_model_status, is_default
    from traitlens.store.layout import safe_name

    if is_default(spec):
        name, ready = DEFAULT_MODEL, default_model_status()["ready"]
    else:
        folder = checkpoint_folder(spec)
        name, ready = (folder.resolve().name if Path(spec).expanduser().exists() else spec.rstrip("/").split("/")[-1],
                       folder is not None)
    if not model_key.startswith(safe_name(name, "model name") + "-"):
        return (f"the vectors are of model {model_key} and --model {spec or 'default'} is {name}: pass --model with "
                "that checkpoint (a folder or a cached Hugging Face id) to measure its layers' norms")
    if not ready:
        return f"--model {spec or 'default'} is not on this machine"
    return None


def _steering_picks(store, trait: str, vector_ids: set[str]) -> dict[str, dict]:
    """``{vector_id: its steering pick}`` (largest shift within the KL budget) for evaluated vectors."""
    from traitlens.pipeline.steer.rule import pick
    from traitlens.queries import StoreSQL
    from traitlens.store.vocabulary import LOOSE_KIND

    with StoreSQL(store) as q:
        rows = q.query("SELECT * FROM steering WHERE trait = ? AND kind <> ?", [trait, LOOSE_KIND]).to_pylist()
    out = {}
    for vid in vector_ids:
        p = pick([r for r in rows if r["vector_id"] == vid])
        if p is not None:
            out[vid] = p
    return out
