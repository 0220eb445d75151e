"""Capture sharded across Dask workers; the driver stays the store's only writer.

Each worker loads the model once (cached per process) and turns batches of encoded prompts
into :class:`~traitlens.store.PendingBatch` results; the driver commits them in arrival
order through its one :class:`~traitlens.store.CommitWriter`, so arrays keep a single writer.
At most ``2 x workers`` batches are in flight, which bounds the driver's memory.
"""

from __future__ import annotations

from traitlens.store import PendingBatch

_WORKER_CACHE: dict[tuple, tuple] = {}  # (model path, device, dtype, sites, layers, poolings, ...) -> (lm, capturer)


def capture_on_worker(model_path: str, device: str, dtype: str, sites: list[str], layers: list[int],
                      poolings: list[str], padding_side: str, generate: int, expect_key: str, batch) -> PendingBatch:
    """Run one batch of :class:`~traitlens.pipeline.model.encode.Encoded` prompts on this worker."""
    from traitlens.pipeline.capture.capturer import Capturer
    from traitlens.pipeline.model.loading import load_model
    from traitlens.pipeline.model.sites import resolve_sites

    key = (model_path, device, dtype, tuple(sites), tuple(layers), tuple(poolings), padding_side, generate)
    if key not in _WORKER_CACHE:
        lm = load_model(model_path, device, dtype, log=lambda *a: None)
        if lm.key != expect_key:
            raise RuntimeError(f"worker loaded {lm.key} from {model_path}, the driver has {expect_key}: "
                               "workers must see the same checkpoint")
        _WORKER_CACHE[key] = (lm, Capturer(lm, resolve_sites(lm.model, sites, layers), poolings, padding_side,
                                           generate))
    return _WORKER_CACHE[key][1].capture(batch)


def iter_captured(client, batches, model_path: str, cfg, layers: list[int], expect_key: str):
    """Yield ``(encoded batch, PendingBatch)`` as workers finish, keeping a bounded number in flight."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    limit = 2 * n_workers
    args = (model_path, cfg.device if cfg.device != "auto" else "auto", cfg.dtype, list(cfg.sites), layers,
            list(cfg.poolings), cfg.padding_side, cfg.generate, expect_key)
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
        yield enc, fut.result()
        nxt = next(it, None)
        if nxt is not None:
            new = client.submit(capture_on_worker, *args, nxt, pure=False)
            pending[new] = nxt
            ac.add(new)
