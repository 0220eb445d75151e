"""Fit every method at one layer and score the vectors: in core, or streamed out of core.

One Dask task per layer (:mod:`.jobs` schedules them) runs :func:`extract_layer`: it reads
that layer's rows once and fits every requested method on them (reading a layer once instead
of once per method is what keeps the out-of-core path at disk speed), then scores each vector
on the held-out split and against the others.

In core vs out of core is decided per task from its share of the memory budget: if the
layer's selected rows fit as float64, they are loaded; otherwise they are streamed chunk by
chunk —
- mean difference, pca-diff, gradient: from class statistics gathered in one pass (exact);
- ICA: whitening from the same statistics, then FastICA on a second pass's ``[n, k]`` data;
- probe: L-BFGS on the identical penalised objective, loss and gradient summed over chunks;
- stability: bootstrap on a random subsample that fits the budget (recorded in ``info``).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace

import numpy as np

from traitlens.store import Store, strict_json
from traitlens.store.arrays import read_rows_checked

from traitlens.pipeline.extract.config import ExtractConfig, method_params
from traitlens.pipeline.extract.contrastive import ContrastiveSet
from traitlens.pipeline.extract.methods import METHODS, ClassStats, ExtractionError, ICADirection, LogisticProbe, check_xy, make_method
from traitlens.pipeline.extract.metrics import cosine, projection_metrics
from traitlens.pipeline.extract.resample import stability
from traitlens.pipeline.extract.specificity import specificity
from traitlens.pipeline.extract.streaming import RowStream, load_fast_cast

# An in-memory fit holds its rows about this many times over (the float64 read, a standardised
# copy, a bootstrap resample, solver workspace): budgets are divided by it. Measured: with
# fewer, a 1 GB budget peaked at 1.6 GB RSS in bench/bench_out_of_core.py.
WORKING_COPIES = 8
CACHE_SHARE_NUM = 6  # eighths of an out-of-core task's budget that cache rows between passes
PROBE_PASSES = 8  # the streamed probe's L-BFGS steps from its warm start (bench_out_of_core: 7-9)


# -- reading rows ------------------------------------------------------------------------------
def _set_rows(cset: ContrastiveSet) -> np.ndarray:
    """Every array row the set reads: train, held-out and its background's."""
    bg = cset.background
    return np.concatenate([cset.train_rows, cset.held_rows] + ([bg.train_rows, bg.held_rows] if bg else []))


def _layer_array(store_root: str, cset: ContrastiveSet, layer: int):
    """The layer's array, checked to hold every row the set reads (no missing chunk)."""
    rows = _set_rows(cset)
    return Store(store_root).layer_array(cset.key, layer, int(rows.max()) + 1 if len(rows) else 0)


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
    bg = cset.background
    # with a background, the methods that take one are fitted with its train rows as more negatives
    parts = [(cset, [m for m in cfg.methods if bg is None or not METHODS[m].takes_background])]
    if bg is not None and any(METHODS[m].takes_background for m in cfg.methods):
        parts.append((with_background_negatives(cset), [m for m in cfg.methods if METHODS[m].takes_background]))
    ests, p_train, p_held, stab, stability_rows = {}, {}, {}, {}, {}
    with threadpool_limits(blas_threads) if blas_threads else nullcontext():
        for part, methods in parts:
            if not methods:
                continue
            sub = replace(cfg, methods=methods)
            if in_core:
                X, pos = read_rows(arr, part.train_rows), part.train_pos
                check_xy(X, np.where(pos, 1, -1))
                fitted = _fit_all(methods, sub, X=X, pos=pos)
                Xs, ps = X, pos
                pt = {m: X @ e.vector_ for m, e in fitted.items()}
            else:
                fitted, pt, ph, (Xs, ps) = _extract_streaming(arr, part, sub, block, task_budget, rng)
                p_held.update(ph)
            if part is not cset:  # train metrics read the trait's own train rows only
                own = np.isin(part.train_rows, cset.train_rows)
                pt = {m: p[own] for m, p in pt.items()}
            ests.update(fitted)
            p_train.update(pt)
            stab.update(stability(fitted, lambda name, b: refit_estimator(cfg, name, b), Xs, ps, cfg.n_boot, rng))
            stability_rows.update(dict.fromkeys(methods, int(len(ps))))
        ests = {m: ests[m] for m in cfg.methods}
        V = np.stack([e.vector_ for e in ests.values()], axis=1)  # [d, n_methods]
        if in_core:
            P = read_rows(arr, cset.held_rows) @ V
            p_held = {m: P[:, i] for i, m in enumerate(ests)}
        p_background = _project(arr, bg.held_rows, V, block, in_core) if bg is not None else None
        if not np.isfinite(np.concatenate(list(p_held.values()))).all():
            raise ExtractionError(f"held-out rows of {cset.key.path} layer {layer} hold NaN or inf; run `traitlens verify`")
        vectors = {m: e.vector_ for m, e in ests.items()}
    records = []
    for i, (m, e) in enumerate(ests.items()):
        metrics = projection_metrics(p_train[m], cset.train_pos, p_held[m], cset.held_pos)
        if bg is not None:
            metrics.update(specificity(p_held[m], cset.held_pos, p_background[:, i]), n_background=len(bg.held_rows))
        info = {k: _jsonable(v) for k, v in getattr(e, "info_", {}).items() if k not in ("components", "pos_mean", "neg_mean", "unmixing", "raw_weights")}
        info.update({"n_boot": cfg.n_boot, "seed": cfg.seed})
        if bg is not None:
            info["background"] = {**bg.provenance(), "negatives": METHODS[m].takes_background}
        if not in_core:
            info["stability_rows"] = stability_rows[m]
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
            "info": strict_json.dumps(info, default=str),  # (a stored JSON column is strict JSON too)
        })
    return records


def fits_in_core(cset: ContrastiveSet, d: int, task_budget: int) -> bool:
    """Whether a layer's selected rows (train, held and the background's) fit a task's budget
    as float64 with their working copies; if not, the task streams them."""
    return len(_set_rows(cset)) * d * 8 * WORKING_COPIES <= task_budget


def with_background_negatives(cset: ContrastiveSet) -> ContrastiveSet:
    """``cset`` whose train rows also hold its background's, as negatives (ascending rows)."""
    bg = cset.background
    rows = np.concatenate([cset.train_rows, bg.train_rows])
    pos = np.r_[cset.train_pos, np.zeros(len(bg.train_rows), bool)]
    order = np.argsort(rows, kind="stable")
    return replace(cset, train_rows=rows[order], train_pos=pos[order])


def _project(arr, rows: np.ndarray, V: np.ndarray, block: int, in_core: bool) -> np.ndarray:
    """Projections ``[len(rows), n_methods]`` of some rows onto every vector (columns of ``V``)."""
    if in_core:
        return read_rows(arr, rows) @ V
    stream = RowStream(arr, rows, np.zeros(len(rows), bool), block)
    V32 = V.astype(np.float32)
    return np.concatenate([X @ V32 for X, _ in stream()]).astype(np.float64)


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
