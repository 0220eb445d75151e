"""The extraction job: run :func:`.fitting.extract_layer` for every layer on Dask (forked local
workers, threads, or a cluster), then store the vectors with their metrics.

:func:`extract` resolves the stored group, builds the contrastive set, skips layers whose
vectors are already stored for the same inputs (:func:`vector_id`), runs the layers
(:func:`run_layers`, the memory budget shared by the tasks that run at once) and appends what
is new to the ``vectors`` table (:func:`save_vectors`), inside one run record.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

from traitlens.store import GroupKey, Store
from traitlens.store.layout import StoreError

from traitlens.pipeline.runtime.cluster import LOCAL, dask_client
from traitlens.pipeline.runtime.interrupts import interrupts_held, let_interrupts_through
from traitlens.pipeline.runtime.lifeline import bind_to_parent
from traitlens.pipeline.runtime.memory import give_back_freed_memory
from traitlens.pipeline.extract.config import ExtractConfig, method_params
from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.fitting import extract_layer
from traitlens.pipeline.extract.methods import ExtractionError, make_method


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
# BLAS threads per fit. One, always: OpenBLAS splits a product's sums differently on two threads
# than on one (a weighted Gram matrix moves by 1e-14), and FastICA's iterations carry that into
# the vector (up to 0.017 apart, cosine 0.9989, on a 256-wide layer), so a thread count taken
# from the cores made the same store and config give other vectors on another machine or
# scheduler. The layers run in parallel instead; a streamed layer's reader thread has a core.
FIT_BLAS_THREADS = 1

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
        # every fit runs on FIT_BLAS_THREADS BLAS threads, whatever the scheduler and the cores:
        # threads share this process's pool (capped around the run), worker processes and
        # cluster workers cap their own inside each task
        tasks = [dask.delayed(extract_layer, pure=True)(root, cset, l, cfg, task_budget, FIT_BLAS_THREADS,
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

            with threadpool_limits(FIT_BLAS_THREADS), _local_pool(local, n_workers) as pool, (
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
        with interrupts_held():  # a signal landing in a fork is never dropped (see interrupts_held)
            pool.submit(int).result()  # a fork pool starts every worker at its first task: now
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
    let_interrupts_through()  # (forked with them held: one sent meanwhile ends it here, quietly)
    bind_to_parent(parent)


def save_vectors(store: Store, records: list[dict], run_id: str) -> tuple[int, int]:
    """Append records not already in the vectors table (same vector_id); returns (new, existing)."""
    from traitlens.store.finite import vector_problem
    from traitlens.store.store import code_version, now_utc

    cv = code_version()
    have = set(store.table("vectors", columns=["vector_id"])["vector_id"].to_pylist())
    stamp = now_utc()
    new = []
    for r in records:  # a NaN, infinite or zero direction is never stored (nothing of the run is)
        why = vector_problem(r["vector"])
        if why is not None:
            raise ExtractionError(f"the {r['method']} vector of {r['trait']!r} at layer {r['layer']} cannot be stored: "
                                  f"{why}; nothing of this run was stored")
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
            scheduler=None, progress: bool = False, skip_unchanged: bool = True,
            background: tuple[set[str], str] | None = None) -> ExtractResult:
    """Extract vectors for ``trait`` at every requested layer and store them with their metrics.

    ``where``: a SQL condition over the ``prompts`` columns that picks the contrastive rows
    (``"dataset = 'a' AND split <> 'test'"``); the rows it selects are fingerprinted into every
    vector's provenance, and the text itself is kept in ``where_sql``.

    ``methods``: a comma list, a list or ``"all"``; None keeps ``cfg.methods`` (all six by default).

    With ``skip_unchanged`` (default) a layer whose every vector is already stored for the same
    rows, params and code version is not recomputed: its stored records are returned instead.

    ``background``: ``(prompt ids, name)`` of an unlabelled corpus captured in the same group
    (:func:`~.contrastive.with_background`): more negatives for the methods that take them, and
    the out-of-corpus specificity figure for every vector (:mod:`.specificity`)."""
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
    if background is not None:
        from traitlens.pipeline.extract.contrastive import with_background

        cset = with_background(store, cset, background[0], background[1], train_split)
    # vectors whose inputs (rows, params, code) are unchanged are already stored: skip their layers
    have = {r["vector_id"]: r for r in store.table("vectors").to_pylist()} if skip_unchanged else {}
    cv = code_version()
    planned = {l: [vector_id(_planned_record(key, l, trait, m, cfg, cset.fingerprint, cset.held_split), cv)
                   for m in cfg.methods]
               for l in layer_list}
    todo = [l for l in layer_list if not all(v in have for v in planned[l])]
    reused = [have[v] for l in layer_list if l not in todo for v in planned[l]]
    config = {"trait": trait, "group": key.path, "layers": layer_list, "methods": cfg.methods, "n_boot": cfg.n_boot,
              "seed": cfg.seed, "memory_budget": cfg.memory_budget, "params": cfg.params, "where": where,
              "train_split": train_split, "held_split": cset.held_split,
              "background": cset.background.provenance() if cset.background is not None else None}
    # the fits run without the writer lock (minutes, and readers need none); each run record takes it briefly
    with store.run("extract", config, lock=True, start=bool(todo)) as run:
        run.counts = {"layers": todo}
        run.message = "no vector of this run was stored"  # what an interrupted or failed run reports
        give_back_freed_memory()  # what building the set left in the allocators: the layers' budget
        records = run_layers(store, cset, todo, cfg, scheduler=scheduler, progress=progress) if todo else []
        if records:  # what is not the trait, scored like a vector: one set of floors per contrastive set
            from traitlens.pipeline.extract.floors import nuisance_floors
            from traitlens.pipeline.extract.specificity import specificity_floor

            floors = {**nuisance_floors(cset), **specificity_floor(cset)}
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
