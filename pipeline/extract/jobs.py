"""Run the estimators over layers with Dask, in core or out of core, and score every vector.

One Dask task per layer: it reads that layer's rows once and fits every requested method on
them (reading a layer once instead of once per method is what keeps the out-of-core path at
disk speed), then scores each vector on the held-out split and against the others.

In core vs out of core is decided per task from ``memory_budget`` (bytes for the whole run,
split across the workers): if the layer's selected rows fit as float64, they are loaded;
otherwise they are streamed chunk by chunk —
- mean difference, pca-diff, gradient: from class statistics gathered in one pass (exact);
- ICA: whitening from the same statistics, then FastICA on a second pass's ``[n, k]`` data;
- probe: L-BFGS on the identical penalised objective, loss and gradient summed over chunks;
- stability: bootstrap on a random subsample that fits the budget (recorded in ``info``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from traitlens.store import GroupKey, Store
from traitlens.store import arrays
from traitlens.store.arrays import read_rows_checked
from traitlens.store.layout import StoreError, layer_name

from traitlens.pipeline.runtime.cluster import LOCAL, dask_client
from traitlens.pipeline.runtime.lifeline import bind_to_parent
from traitlens.pipeline.runtime.memory import give_back_freed_memory
from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.methods import METHODS, ClassStats, ExtractionError, ICADirection, LogisticProbe, check_xy, make_method
from traitlens.pipeline.extract.metrics import cosine, projection_metrics
from traitlens.pipeline.extract.resample import stability
from traitlens.pipeline.extract.streaming import RowStream, load_fast_cast

DEFAULT_METHODS = ("mean_diff", "pca_diff", "ica", "probe", "gradient", "random")
# An in-memory fit holds its rows about this many times over (the float64 read, a standardised
# copy, a bootstrap resample, solver workspace): budgets are divided by it. Measured: with
# fewer, a 1 GB budget peaked at 1.6 GB RSS in bench/bench_out_of_core.py.
WORKING_COPIES = 8
CACHE_SHARE_NUM = 6  # eighths of an out-of-core task's budget that cache rows between passes
PROBE_PASSES = 8  # the streamed probe's L-BFGS steps from its warm start (bench_out_of_core: 7-9)


@dataclass
class ExtractConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    params: dict[str, dict] = field(default_factory=dict)  # method -> constructor params
    n_boot: int = 8
    seed: int = 0
    memory_budget: int = 1 << 30  # bytes, whole run
    chunk_rows: int | None = None  # streaming read size; default: 16 zarr chunks

    def validate(self) -> "ExtractConfig":
        """Refuse settings that cannot run (raises ExtractionError naming the option)."""
        for name, lo in (("n_boot", 0), ("seed", 0), ("memory_budget", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                opt = {"memory_budget": "--memory", "n_boot": "--n-boot", "seed": "--seed"}[name]
                raise ExtractionError(f"{opt} {v!r}: must be an integer of at least {lo}")
        if self.chunk_rows is not None and (not isinstance(self.chunk_rows, int) or self.chunk_rows < 1):
            raise ExtractionError(f"chunk_rows {self.chunk_rows!r}: must be a positive integer")
        self.methods = parse_methods(self.methods)
        check_params(self.params)
        return self


def method_params(cfg: ExtractConfig, name: str) -> dict:
    """Constructor params of one method: the configured ones, with ``seed`` defaulting to the
    run's ``--seed`` for methods that take one (random, gradient, ICA), so that the seed asked
    for is the seed used — and hashed into the vector's identity."""
    params = dict(cfg.params.get(name, {}))
    if "seed" not in params and "seed" in param_names(name):
        params["seed"] = cfg.seed
    return params


def param_names(name: str) -> list[str]:
    """The constructor parameters of a method (scikit-learn's ``get_params`` of a default one)."""
    return sorted(make_method(name).get_params())


def check_params(params: dict) -> None:
    """Refuse method params the estimators do not take (before anything runs or is written)."""
    if not isinstance(params, dict):
        raise ExtractionError(f"extract params must be a table of method -> {{param = value}}, got {params!r:.80}")
    for name, p in params.items():
        if name not in METHODS:
            raise ExtractionError(f"extract params: unknown method {name!r}; methods: {', '.join(METHODS)}")
        if not isinstance(p, dict):
            raise ExtractionError(f"extract params.{name} must be a table of parameter = value, got "
                                  f"{type(p).__name__} {p!r:.80}")
        accepted = param_names(name)
        bad = [k for k in p if k not in accepted]
        if bad:
            raise ExtractionError(f"extract params.{name}: unknown parameter(s) {bad}; {name} takes "
                                  f"{', '.join(accepted) or 'none'}")
        try:
            make_method(name, **p)
        except (TypeError, ValueError) as e:
            raise ExtractionError(f"extract params.{name}: {e}") from None


def parse_size(text: str | int) -> int:
    """``1GB`` | ``512MB`` | ``64k`` | bytes -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = str(text).strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise ExtractionError(f"memory {text!r}: use bytes or a size like 512MB, 2GB") from None


def parse_methods(spec: str | list[str]) -> list[str]:
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if items == ["all"] or not items:
        return list(DEFAULT_METHODS)
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise ExtractionError(f"unknown method(s) {bad}; use {', '.join(METHODS)} or all")
    return items


# -- reading rows ------------------------------------------------------------------------------
def _layer_array(store_root: str, cset: ContrastiveSet, layer: int):
    """The layer's array, checked to hold every row the set reads (no missing chunk)."""
    rows = np.concatenate([cset.train_rows, cset.held_rows])
    return Store(store_root).layer_array(cset.key, layer, int(rows.max()) + 1 if len(rows) else 0)


def _layer_width(store: Store, key: GroupKey, layer: int) -> int:
    """d of a stored layer, from its metadata alone (the task checks its chunks when it opens it)."""
    return arrays.get_array(arrays.get_group(store.zarr_root(), key.path), layer_name(layer), key.path).shape[1]


def read_rows(arr, rows: np.ndarray) -> np.ndarray:
    """Rows (ascending int64) of a layer array as float64 ``[len(rows), d]``."""
    if len(rows) == 0:
        return np.zeros((0, arr.shape[1]))
    return read_rows_checked(arr, rows).astype(np.float64, copy=False)


# -- one layer ---------------------------------------------------------------------------------
def _fit_all(methods, cfg, X=None, pos=None, stats=None, chunks=None, ica_Z=None, probe_start=None):
    """Fit every method in memory (X, pos) or from streaming inputs; returns {name: estimator}.
    ``probe_start``: the streamed probe's warm start (:func:`_probe_warm_start`).

    In memory the class statistics are computed once and shared: every method but the probe
    needs them, and their Gram matrix is the costly part of a fit."""
    out = {}
    if X is not None and stats is None:
        stats = ClassStats.empty(X.shape[1]).update(X, pos)
    for name in methods:
        est = make_method(name, **method_params(cfg, name))
        if X is not None:
            if isinstance(est, ICADirection):
                est.fit_with_stats(X, pos, stats)
            elif est.needs_rows:
                est.fit(X, np.where(pos, 1, -1))
            else:
                est.fit_stats(stats)
        elif isinstance(est, ICADirection):
            mean, W, Z, zpos = ica_Z
            est.fit_reduced(Z, zpos, W, stats)
        elif isinstance(est, LogisticProbe):
            est.fit_streaming(chunks, stats, init=probe_start)
        else:
            est.fit_stats(stats)
        out[name] = est
    return out


def refit_estimator(cfg: ExtractConfig, name: str, b: int):
    """A fresh estimator for bootstrap resample ``b``: the configured one, except that the
    random floor draws a new direction per resample (its stability is then ~0)."""
    params = method_params(cfg, name)
    if name == "random":
        params["seed"] = params.get("seed", 0) + b + 1
    return make_method(name, **params)


def extract_layer(store_root: str, cset: ContrastiveSet, layer: int, cfg: ExtractConfig, task_budget: int,
                  blas_threads: int | None = None) -> list[dict]:
    """Fit and score every method at one layer. Returns one record per method (no vector ids).

    ``blas_threads`` caps BLAS threads inside the task (worker processes); the local threaded
    scheduler caps them once around the whole run instead, since the cap is process-wide.
    """
    from threadpoolctl import threadpool_limits

    arr = _layer_array(store_root, cset, layer)
    d = arr.shape[1]
    row_bytes = d * 8 * WORKING_COPIES
    in_core = fits_in_core(cset, d, task_budget)
    block = cfg.chunk_rows or max(arr.chunks[0], min(arr.chunks[0] * 16, task_budget // row_bytes or 1))
    rng = np.random.default_rng(cfg.seed + layer)
    with threadpool_limits(blas_threads) if blas_threads else nullcontext():
        if in_core:
            X, pos = read_rows(arr, cset.train_rows), cset.train_pos
            check_xy(X, np.where(pos, 1, -1))
            ests = _fit_all(cfg.methods, cfg, X=X, pos=pos)
            Xh = read_rows(arr, cset.held_rows)
            p_train = {m: X @ e.vector_ for m, e in ests.items()}
            p_held = {m: Xh @ e.vector_ for m, e in ests.items()}
            Xs, ps = X, pos
        else:
            ests, p_train, p_held, (Xs, ps) = _extract_streaming(arr, cset, cfg, block, task_budget, rng)
        if not np.isfinite(np.concatenate(list(p_held.values()))).all():
            raise ExtractionError(f"held-out rows of {cset.key.path} layer {layer} hold NaN or inf; run `traitlens verify`")
        vectors = {m: e.vector_ for m, e in ests.items()}
        stab = stability(ests, lambda name, b: refit_estimator(cfg, name, b), Xs, ps, cfg.n_boot, rng)
    records = []
    for m, e in ests.items():
        metrics = projection_metrics(p_train[m], cset.train_pos, p_held[m], cset.held_pos)
        info = {k: _jsonable(v) for k, v in getattr(e, "info_", {}).items() if k not in ("components", "pos_mean", "neg_mean", "unmixing", "raw_weights")}
        info.update({"n_boot": cfg.n_boot, "seed": cfg.seed})
        if not in_core:
            info["stability_rows"] = int(len(ps))
        records.append({
            **cset.key.as_dict(), "layer": int(layer), "trait": cset.trait, "method": m,
            "params": json.dumps(e.get_params(), sort_keys=True, default=str), "fingerprint": cset.fingerprint,
            "where_sql": cset.where_sql, "n_pos": cset.n_pos, "n_neg": cset.n_neg, "held_split": cset.held_split,
            "n_boot": cfg.n_boot, "seed": cfg.seed,
            "n_held_pos": int(cset.held_pos.sum()), "n_held_neg": int((~cset.held_pos).sum()),
            "out_of_core": not in_core, "d": d, "raw_norm": float(e.raw_norm_),
            "vector": e.vector_.astype(np.float32).tolist(), **metrics, "stability": stab[m],
            "agreement": _agreement(m, vectors),
            "cosines": json.dumps({o: round(cosine(e.vector_, vectors[o]), 6) for o in vectors if o != m}),
            "info": json.dumps(info, default=str),
        })
    return records


def fits_in_core(cset: ContrastiveSet, d: int, task_budget: int) -> bool:
    """Whether a layer's selected rows (train and held) fit a task's budget as float64 with
    their working copies; if not, the task streams them."""
    return (len(cset.train_rows) + len(cset.held_rows)) * d * 8 * WORKING_COPIES <= task_budget


def _agreement(method: str, vectors: dict[str, np.ndarray]) -> float:
    """Mean cosine of one method's vector to the other real methods' at the same layer (NaN
    when it is the only one). The random baseline is left out: it agrees with nothing."""
    others = [cosine(vectors[method], v) for o, v in vectors.items() if o not in (method, "random")]
    return float(np.mean(others)) if others else float("nan")


def _extract_streaming(arr, cset, cfg, block, budget, rng):
    """Out-of-core fits for one layer; returns (estimators, train projections, held projections,
    (X, pos) subsample for stability).

    One pass gathers the class statistics (the [d, d] moments only when a method needs them)
    and a class-balanced random subsample that fits the budget (the probe's warm start and the
    rows stability is estimated on); ICA takes a second pass for its reduced data, the probe one
    per L-BFGS step. Once the warm start is fitted (its working copies are the largest thing
    this task holds), most of the budget caches the rows as stored, so the later passes read
    memory rather than the store."""
    rows, pos = cset.train_rows, cset.train_pos
    d = arr.shape[1]
    stream = RowStream(arr, rows, pos, block)
    load_fast_cast(len(rows) * d * (PROBE_PASSES + 3 if "probe" in cfg.methods else 3))
    stats = ClassStats.empty(d, means_only=not any(METHODS[m].needs_outer for m in cfg.methods))
    per_class = max(2, budget // (d * 8 * WORKING_COPIES) // 2)
    pick = np.sort(np.concatenate([rng.choice(idx, min(per_class, len(idx)), replace=False)
                                   for idx in (np.flatnonzero(pos), np.flatnonzero(~pos))]))
    picked = []
    for X, p, start in stream.blocks():
        if not np.isfinite(X).all():
            raise ExtractionError("training rows hold NaN or inf; run `traitlens verify`")
        stats.update(X, p)
        lo, hi = np.searchsorted(pick, [start, start + len(X)])
        picked.append(X[pick[lo:hi] - start].astype(np.float64))
    sample = (np.concatenate(picked), pos[pick])
    del picked  # (its copy would sit beside the cache)
    probe_start = _probe_warm_start(cfg, sample) if "probe" in cfg.methods else None
    stream.cache_bytes = budget * CACHE_SHARE_NUM // 8
    ica_Z = None
    if "ica" in cfg.methods:
        ica = make_method("ica", **method_params(cfg, "ica"))
        mean, W = ica.whitening(stats)
        Z = np.concatenate([(X - mean) @ W.T for X, _ in stream()])
        ica_Z = (mean, W, Z, pos)
    ests = _fit_all(cfg.methods, cfg, stats=stats, chunks=stream, ica_Z=ica_Z, probe_start=probe_start)
    V = np.stack([e.vector_ for e in ests.values()], axis=1).astype(np.float32)  # [d, n_methods]
    pt = np.concatenate([X @ V for X, _ in stream()]).astype(np.float64)
    del stream  # frees the cache before the held rows are read
    held = RowStream(arr, cset.held_rows, cset.held_pos, block)
    ph = (np.concatenate([X @ V for X, _ in held()]).astype(np.float64) if len(cset.held_rows)
          else np.zeros((0, V.shape[1])))
    names = list(ests)
    p_train = {m: pt[:, i] for i, m in enumerate(names)}
    p_held = {m: ph[:, i] for i, m in enumerate(names)}
    return ests, p_train, p_held, sample


def _probe_warm_start(cfg, sample):
    """The probe fitted in memory on the subsample ``(X [m, d], pos [m])``: the streamed fit
    starts from it (None for an L1 probe, which streams from zero)."""
    probe = make_method("probe", **method_params(cfg, "probe"))
    if probe.penalty != "l2":
        return None
    return probe.fit(sample[0], np.where(sample[1], 1, -1))


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 64 else f"array{list(v.shape)}"
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, list) and len(v) > 64:
        return v[:: max(1, len(v) // 64)]
    return v


def _planned_record(key: GroupKey, layer: int, trait: str, method: str, cfg: ExtractConfig, fp: str,
                    held_split: str) -> dict:
    """The fields :func:`vector_id` hashes, known before any fit."""
    params = json.dumps(make_method(method, **method_params(cfg, method)).get_params(), sort_keys=True, default=str)
    return {**key.as_dict(), "layer": int(layer), "trait": trait, "method": method, "params": params,
            "fingerprint": fp, "held_split": held_split, "n_boot": cfg.n_boot, "seed": cfg.seed}


def vector_id(rec: dict, code_version: str) -> str:
    """Identity of a stored vector: everything that decides its values and its metrics (group,
    layer, trait, method and params, the rows' fingerprint, the split its metrics are held out
    on, the bootstrap count and seed that make its stability, the code version). Same inputs,
    same id; any change, a new vector."""
    parts = [rec[k] for k in ("model_key", "fmt", "site", "pooling", "layer", "trait", "method", "params",
                              "fingerprint", "held_split", "n_boot", "seed")]
    return hashlib.sha256(json.dumps(parts + [code_version], default=str).encode()).hexdigest()[:16]


# -- scheduling --------------------------------------------------------------------------------
def run_layers(store: Store, cset: ContrastiveSet, layers: list[int], cfg: ExtractConfig, scheduler=None,
               progress: bool = False) -> list[dict]:
    """Run :func:`extract_layer` for every layer on Dask; returns all records, layer order."""
    import dask

    stored = set(store.layers(cset.key))
    missing = [l for l in layers if l not in stored]
    if missing:
        raise ExtractionError(f"layers {missing} are not stored for {cset.key.path}; stored: "
                              f"{sorted(stored) or 'none'} (ingest them with --layers)")
    with dask_client(scheduler) as client:
        n_workers = (sum(client.nthreads().values()) if client is not None else os.cpu_count() or 1)
        # the budget is shared by the tasks that run at once: one layer alone may use all of it
        concurrent = max(1, min(n_workers, len(layers)))
        task_budget = max(cfg.memory_budget // concurrent, 1)
        root = str(store.root)
        local = scheduler if scheduler in LOCAL else default_local_scheduler(len(layers))
        # one BLAS pool sized to the cores: concurrent tasks x BLAS threads never oversubscribe
        # them. Threads share this process's pool (capped around the run); worker processes
        # cap their own inside each task. A streamed layer reads its next block on a thread of
        # its own, so it leaves that a core (measured: a probe pass 0.68 s against 0.96 s).
        streams = not fits_in_core(cset, _layer_width(store, cset.key, layers[0]), task_budget)
        blas_per_task = max(1, (os.cpu_count() or 1) // concurrent - streams)
        blas = 1 if client is not None else (blas_per_task if local == "processes" else None)
        tasks = [dask.delayed(extract_layer, pure=True)(root, cset, l, cfg, task_budget, blas,
                                                        dask_key_name=f"extract-L{l}") for l in layers]
        if client is not None:
            futures = client.compute(tasks)
            if progress:
                from distributed import progress as dprogress

                dprogress(futures)
            results = client.gather(futures)
        else:
            from threadpoolctl import threadpool_limits
            from tqdm.dask import TqdmCallback

            with threadpool_limits(blas_per_task), _local_pool(local, n_workers) as pool, (
                    TqdmCallback(desc="extract", unit="layer") if progress else nullcontext()):
                extra = ({"pool": pool, "chunksize": 1} if pool is not None else  # Dask's own spawned pool:
                         {"initializer": partial(bind_to_parent, os.getpid())} if local == "processes" else {})
                results = dask.compute(*tasks, scheduler=_local_get(local), num_workers=n_workers, **extra)
    return [rec for layer_recs in results for rec in layer_recs]


def default_local_scheduler(n_layers: int) -> str:
    """Dask's local scheduler for a run given none: ``processes`` for four or more layers on a
    Linux machine with more than one core, else ``threads``. The fits and bootstrap refits are
    small NumPy and SciPy steps that hold the GIL, so threads barely overlap them (README,
    Figures: extraction speed); a forked worker costs a few milliseconds. (macOS forbids fork
    after its frameworks start threads, so there it stays on threads.)"""
    forks = sys.platform.startswith("linux")
    return "processes" if forks and (os.cpu_count() or 1) > 1 and n_layers >= 4 else "threads"


def _local_get(local: str):
    """Dask's ``get`` for a local scheduler name. Passing the function rather than its name
    skips Dask's check for a distributed Client, which imports ``distributed`` (0.4 s)."""
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    return {"threads": dask.threaded.get, "processes": dask.multiprocessing.get}.get(local, dask.local.get_sync)


@contextmanager
def _local_pool(local: str, n_workers: int):
    """The worker pool of Dask's ``processes`` scheduler (None for the others): forked workers
    (a spawned one first imports NumPy, SciPy and scikit-learn again, ~2.6 s; the store's Zarr
    resets its event loop after a fork), given to Dask with one task per submission (it batches
    six by default, so a few layers could sit behind one busy worker). On Ctrl-C or SIGTERM the
    workers are ended at once rather than left to finish their layers."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if local != "processes" or not sys.platform.startswith("linux"):  # elsewhere: Dask's own (spawned) pool
        yield None
        return
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_leaves_on_ctrl_c, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _worker_leaves_on_ctrl_c(parent: int) -> None:
    """In a forked worker: Ctrl-C or SIGTERM (a terminal sends Ctrl-C to the whole process
    group) ends it at once and quietly; the parent reports the interrupt, and nothing is lost,
    since vectors are saved only after every layer is done. A parent killed outright (-9) takes
    the worker with it (:mod:`~traitlens.pipeline.runtime.lifeline`)."""
    import signal

    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    bind_to_parent(parent)


def save_vectors(store: Store, records: list[dict], run_id: str) -> tuple[int, int]:
    """Append records not already in the vectors table (same vector_id); returns (new, existing)."""
    from traitlens.store.store import code_version, now_utc

    cv = code_version()
    have = set(store.table("vectors", columns=["vector_id"])["vector_id"].to_pylist())
    stamp = now_utc()
    new = []
    for r in records:
        vid = r["vector_id"] = vector_id(r, cv)  # the caller's records carry their ids too
        if vid not in have:
            have.add(vid)
            new.append({**r, "vector_id": vid, "code_version": cv, "run_id": run_id, "created_at": stamp})
    store.append("vectors", new)
    return len(new), len(records) - len(new)


# -- the whole job -----------------------------------------------------------------------------
@dataclass
class ExtractResult:
    run_id: str
    key: GroupKey
    trait: str
    layers: list[int]
    methods: list[str]
    n_new: int
    n_existing: int
    records: list[dict]
    seconds: float
    computed_layers: list[int] = field(default_factory=list)


def resolve_group(store: Store, model: str | None = None, fmt: str | None = None, site: str = "resid",
                  pooling: str = "last") -> GroupKey:
    """The one stored group matching the options, or an error listing the candidates."""
    groups = store.groups()
    if not groups:
        raise ExtractionError(f"store {store.root} holds no activations; run `traitlens ingest` first")
    cands = [g for g in groups if g.site == site and g.pooling == pooling and (fmt is None or g.fmt == fmt)
             and (model is None or g.model_key == model or g.model_key.startswith(model))]
    keys = sorted({(g.model_key, g.fmt) for g in cands})
    if len(keys) != 1:
        listing = ", ".join(f"{g.model_key}/{g.fmt}/{g.site}/{g.pooling}" for g in groups)
        what = "no stored group matches" if not keys else "several stored groups match"
        raise ExtractionError(f"{what} (model={model or 'any'}, fmt={fmt or 'any'}, site={site}, pooling={pooling}); "
                              f"stored: {listing}. Narrow it with --model / --fmt / --site / --pooling")
    return next(g for g in cands if (g.model_key, g.fmt) == keys[0])


def extract(store_path, trait: str, methods=None, layers="all", model: str | None = None, fmt: str | None = None,
            site: str = "resid", pooling: str = "last", train_split: str = "train", held_split: str = "auto",
            prompt_ids: set[str] | None = None, where: str | None = None, cfg: ExtractConfig | None = None,
            scheduler=None, progress: bool = False, skip_unchanged: bool = True) -> ExtractResult:
    """Extract vectors for ``trait`` at every requested layer and store them with their metrics.

    ``where``: a SQL condition over the ``prompts`` columns that picks the contrastive rows
    (``"dataset = 'a' AND split <> 'test'"``); the rows it selects are fingerprinted into every
    vector's provenance, and the text itself is kept in ``where_sql``.

    ``methods``: a comma list, a list or ``"all"``; None keeps ``cfg.methods`` (all six by default).

    With ``skip_unchanged`` (default) a layer whose every vector is already stored for the same
    rows, params and code version is not recomputed: its stored records are returned instead."""
    import time

    from traitlens.store.store import code_version

    from traitlens.pipeline.extract.contrastive import contrastive_set
    from traitlens.pipeline.model.layers import SiteError, parse_layers

    t0 = time.perf_counter()
    cfg = cfg or ExtractConfig()
    cfg.methods = methods if methods is not None else cfg.methods
    cfg.validate()
    store = Store.open(store_path)
    key = resolve_group(store, model, fmt, site, pooling)
    stored = store.layers(key)
    if not stored:
        raise StoreError(f"{key.path} has no layer arrays")
    try:
        layer_list = stored if str(layers).strip().lower() == "all" else parse_layers(layers, max(stored) + 1)
    except SiteError:
        raise ExtractionError(f"--layers {layers}: not stored for {key.path}; stored layers: {stored} "
                              "(ingest more with `traitlens ingest --layers`)") from None
    if where is not None:
        from traitlens.queries import select_prompt_ids

        chosen = select_prompt_ids(store, trait, where)
        prompt_ids = chosen if prompt_ids is None else prompt_ids & chosen
    cset = contrastive_set(store, key, trait, train_split, held_split, prompt_ids, where)
    # vectors whose inputs (rows, params, code) are unchanged are already stored: skip their layers
    have = {r["vector_id"]: r for r in store.table("vectors").to_pylist()} if skip_unchanged else {}
    cv = code_version()
    planned = {l: [vector_id(_planned_record(key, l, trait, m, cfg, cset.fingerprint, cset.held_split), cv)
                   for m in cfg.methods]
               for l in layer_list}
    todo = [l for l in layer_list if not all(v in have for v in planned[l])]
    reused = [have[v] for l in layer_list if l not in todo for v in planned[l]]
    config = {"trait": trait, "group": key.path, "layers": layer_list, "methods": cfg.methods, "n_boot": cfg.n_boot,
              "seed": cfg.seed, "memory_budget": cfg.memory_budget, "params": cfg.params, "where": where}
    # the fits run without the writer lock (minutes, and readers need none); each run record takes it briefly
    with store.run("extract", config, lock=True, start=bool(todo)) as run:
        run.counts = {"layers": todo}
        run.message = "no vector of this run was stored"  # what an interrupted or failed run reports
        give_back_freed_memory()  # what building the set left in the allocators: the layers' budget
        records = run_layers(store, cset, todo, cfg, scheduler=scheduler, progress=progress) if todo else []
        if records:  # what is not the trait, scored like a vector: one set of floors per contrastive set
            from traitlens.pipeline.extract.floors import nuisance_floors

            floors = nuisance_floors(cset)
            for r in records:
                r.update(floors)
        with store.lock("extract") if todo else nullcontext():
            n_new, n_old = save_vectors(store, records, run.run_id)
        n_old += len(reused)
        run.counts = {"vectors": len(records) + len(reused), "new": n_new, "existing": n_old, "layers_computed": todo}
        run.message = ""
    run_id = run.run_id
    records = sorted(records + reused, key=lambda r: (r["layer"], cfg.methods.index(r["method"])))
    return ExtractResult(run_id, key, trait, layer_list, cfg.methods, n_new, n_old, records, time.perf_counter() - t0,
                         todo)
