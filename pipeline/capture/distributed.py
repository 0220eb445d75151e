"""Capture sharded across Dask workers, who write their activations into the store themselves.

Each worker loads the model once (cached per process). The driver stays the store's only
committer, and the arrays' only metadata writer:

- it hands each task a **range** of rows that ends on a chunk boundary (``CommitWriter.reserve``:
  no two tasks ever touch one chunk) and grows the arrays ahead of the tasks;
- the worker captures the range's prompts, writes every layer of every group at those rows, in
  the store's dtype, and returns only their metadata (token counts, truncation, responses): a
  few bytes per prompt travel, not ``layers x d`` floats;
- the driver records finished ranges strictly in row order (one rows part each, then the
  commit marks), so a range is stored only once every range before it is.

A worker that dies mid-range leaves chunks past the commit mark: Dask reruns the task (the same
rows, rewritten whole) or, if the run dies, they are an uncommitted tail (``verify --repair``
drops it; the next run overwrites it). A task that outlives its run writes nothing: right before
writing it checks that the store's lock is still held by its run (:func:`holder_token`). A value
past float16 makes the worker write nothing and return its values; the driver lets every task
finish, promotes the array to float32 (keeping every reserved row) and writes that range itself.

Groups with ``tokens`` pooling, or groups standing at different rows, fall back to the old way:
workers return values (float16 where no value is past its range) and the driver writes them
(:func:`iter_captured`). At most
``2 x workers`` tasks are in flight, which bounds the driver's memory.
"""

from __future__ import annotations

from itertools import islice

import numpy as np

from traitlens.store import PendingBatch

_WORKER_CACHE: dict[tuple, tuple] = {}  # (model path, load options, sites, layers, poolings, ...) -> (lm, capturer)


def capture_on_worker(model_path: str, load: tuple, sites: list[str], layers: list[int], poolings: list[str],
                      padding_side: str, generate: int, expect_key: str, max_tokens, batch) -> PendingBatch:
    """Run one batch of :class:`~traitlens.pipeline.model.encode.Encoded` prompts on this worker
    and return its values (the fallback: the driver writes them), as float16 (the store's dtype)
    wherever no value is past float16's range: half the bytes of float32 travel. ``load``: the
    ``load_model`` keyword arguments as sorted ``(name, value)`` pairs; ``max_tokens``: the
    budget pieces of the batch are cut to (``"auto"``: from this worker's free memory)."""
    from traitlens.store.arrays import needs_float32

    capturer = _worker_model(model_path, load, sites, layers, poolings, padding_side, generate, expect_key)
    out = _concat(list(_pieces(capturer, batch, max_tokens)))
    out.pooled = {k: {l: v if needs_float32(v) else v.astype(np.float16) for l, v in per.items()}
                  for k, per in out.pooled.items()}
    return out


def _pieces(capturer, batch: list, max_tokens):
    """The batch captured in consecutive pieces within ``max_tokens``, each halved and retried
    if it runs out of memory (:class:`~.token_budget.Backoff`): host batches, in order."""
    from traitlens.pipeline.capture.token_budget import Backoff, auto_max_tokens

    lm = capturer.lm
    if max_tokens == "auto":
        max_tokens, _ = auto_max_tokens(lm, len(capturer.points), capturer.poolings, capturer.generate, lm.max_length)
    for _, out in Backoff(max_tokens).capture(capturer.capture, batch, lm.device):
        yield out


def _concat(parts: list[PendingBatch]) -> PendingBatch:
    """Batches captured one after the other, as one (rows, and token rows, in order)."""
    if len(parts) == 1:
        return parts[0]
    ids = [p.token_ids for p in parts]
    return PendingBatch(prompt_ids=[i for p in parts for i in p.prompt_ids],
                        token_counts=np.concatenate([p.token_counts for p in parts]),
                        truncated=np.concatenate([p.truncated for p in parts]),
                        responses=[r for p in parts for r in p.responses],
                        pooled={k: {l: np.concatenate([p.pooled[k][l] for p in parts]) for l in parts[0].pooled[k]}
                                for k in parts[0].pooled},
                        token_ids=None if ids[0] is None else np.concatenate(ids))


def _worker_model(model_path, load, sites, layers, poolings, padding_side, generate, expect_key):
    """This worker's (model, capturer), loaded once per process and settings."""
    from traitlens.pipeline.capture.capturer import Capturer
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.model.sites import resolve_sites

    key = (model_path, load, tuple(sites), tuple(layers), tuple(poolings), padding_side, generate)
    if key not in _WORKER_CACHE:
        opts = dict(load)
        if isinstance(opts.get("max_memory"), tuple):
            opts["max_memory"] = dict(opts["max_memory"])
        lm = load_model(model_path, log=lambda *a: None, **opts)
        if lm.key != expect_key:
            raise RuntimeError(f"worker loaded {lm.key} from {model_path}, the driver has {expect_key}: "
                               "workers must see the same checkpoint")
        _WORKER_CACHE[key] = (lm, Capturer(lm, resolve_sites(lm.model, sites, layers), poolings, padding_side,
                                           generate))
    return _WORKER_CACHE[key][1]


def _capture_in_order(capturer, encs: list, batch_size: int, max_tokens) -> PendingBatch:
    """Capture ``encs`` in length-sorted batches (see :func:`_pieces`); one :class:`PendingBatch`
    whose row j is ``encs[j]``. (Pooled groups only: ``tokens`` rows are per token.)"""
    from traitlens.pipeline.capture.batching import length_batches

    order, parts = [], []
    for idx in length_batches([len(e.ids) for e in encs], batch_size, max_tokens if max_tokens != "auto" else None):
        parts += _pieces(capturer, [encs[i] for i in idx], max_tokens)  # consecutive pieces of this batch
        order += list(idx)
    batch = _concat(parts)
    inv = np.argsort(np.asarray(order))  # back to the given order: row j is encs[j]
    return PendingBatch(prompt_ids=[e.prompt_id for e in encs], token_counts=batch.token_counts[inv],
                        truncated=batch.truncated[inv], responses=[batch.responses[i] for i in inv],
                        pooled={k: {l: v[inv] for l, v in per.items()} for k, per in batch.pooled.items()})


def capture_range(model_args: tuple, batch_size: int, max_tokens, store_url: str, token: str,
                  targets: list[tuple[str, str, str, int]], start: int, encs: list) -> PendingBatch:
    """On a worker: capture ``encs`` (one range), write rows ``[start, start + len(encs))`` of
    every target ``(group path, site, pooling, layer)``, return the metadata only (``written``).
    A value past float16 in a float16 array: nothing is written, the values are returned."""
    from traitlens.store import arrays
    from traitlens.store.layout import ZARR_DIR, StoreError, layer_name
    from traitlens.store.location import store_path
    from traitlens.store.lock import holder_token

    batch = _capture_in_order(_worker_model(*model_args), encs, batch_size, max_tokens)
    root = store_path(store_url) / ZARR_DIR
    opened = [(arrays.open_array(root / path / layer_name(l)), batch.pooled[(site, pooling)][l])
              for path, site, pooling, l in targets]
    if any(a.dtype == np.float16 and arrays.needs_float32(v) for a, v in opened):
        return batch  # the driver writes this one (it promotes the array first)
    if holder_token(store_path(store_url)) != token:
        raise StoreError(f"the run that sent this task no longer holds the store's lock: {len(encs)} prompts "
                         "captured, none written")
    for a, v in opened:
        a[start:start + len(v)] = v.astype(a.dtype, copy=False)
    return PendingBatch(batch.prompt_ids, batch.token_counts, batch.truncated, batch.responses, {}, written=True)


def _load_args(cfg) -> tuple:
    """The ``load_model`` keyword arguments of ``cfg``, hashable (the worker cache's key)."""
    return tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                        for k, v in cfg.load_kwargs().items()))


def iter_written(client, prompts, writer, store, model_path: str, cfg, layers: list[int], expect_key: str,
                 stats: dict):
    """Yield ``(encoded prompts, PendingBatch)`` per range, each already committed: workers wrote
    the arrays, this driver recorded the range (see the module). ``prompts``: encoded prompts in
    capture order. ``stats["bytes_received"]`` counts what came back from the workers."""
    from distributed import as_completed, wait

    from traitlens.store.lock import holder_token

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    limit = 2 * n_workers
    model_args = (model_path, _load_args(cfg), list(cfg.sites), layers, list(cfg.poolings), cfg.padding_side,
                  cfg.generate, expect_key)
    targets = [(g.path, g.site, g.pooling, l) for g in writer.groups for l in writer.layers_of[g]]
    token = holder_token(store.root)
    it = iter(prompts)
    flight: dict = {}  # future -> (start, encs)
    ready: dict = {}  # start -> (encs, batch)
    ac = as_completed()

    def submit() -> bool:
        encs = list(islice(it, writer.next_range()))
        if not encs:
            return False
        start = writer.reserve(len(encs))
        fut = client.submit(capture_range, model_args, cfg.batch_size, cfg.max_tokens, str(store.root), token,
                            targets, start, encs, pure=False)
        flight[fut] = (start, encs)
        ac.add(fut)
        return True

    def collect(fut) -> None:
        start, encs = flight.pop(fut)
        batch = fut.result()
        stats["bytes_received"] = stats.get("bytes_received", 0) + batch.nbytes()
        ready[start] = (encs, batch)

    while len(flight) < limit and submit():
        pass
    for fut in ac:
        if fut not in flight:  # already collected while draining
            continue
        collect(fut)
        while writer.next_row in ready:
            encs, batch = ready.pop(writer.next_row)
            if not batch.written:  # float16 overflow: let every task finish before the array is rewritten
                wait(list(flight))
                for f in list(flight):
                    collect(f)
            writer.commit_delegated(writer.next_row, batch)
            yield encs, batch
        while len(flight) < limit and submit():
            pass
    writer.end_delegation()


def iter_captured(client, batches, model_path: str, cfg, layers: list[int], expect_key: str, stats: dict):
    """Yield ``(encoded batch, PendingBatch)`` as workers finish, keeping a bounded number in flight
    (the fallback: values travel to this driver, which writes them)."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    limit = 2 * n_workers
    args = (model_path, _load_args(cfg), list(cfg.sites), layers, list(cfg.poolings), cfg.padding_side,
            cfg.generate, expect_key, cfg.max_tokens)
    it = iter(batches)
    pending = {}
    for enc in it:
        fut = client.submit(capture_on_worker, *args, enc, pure=False)
        pending[fut] = enc
        if len(pending) >= limit:
            break
    ac = as_completed(list(pending))
    for fut in ac:
        enc = pending.pop(fut)
        batch = fut.result()
        stats["bytes_received"] = stats.get("bytes_received", 0) + batch.nbytes()
        yield enc, batch
        nxt = next(it, None)
        if nxt is not None:
            new = client.submit(capture_on_worker, *args, nxt, pure=False)
            pending[new] = nxt
            ac.add(new)
