"""Which Dask cluster a run uses: one rule for ingest, extract and workflows.

Dask's own conventions, never a hidden cluster: a ``Client`` you pass is used and left open; an
address (``tcp://...``) gets a Client that is closed when the run ends; with nothing given, the
``scheduler-address`` of Dask's config or ``DASK_SCHEDULER_ADDRESS`` (when ``from_env``); and
``threads`` / ``processes`` / ``sync`` or nothing at all mean Dask's local scheduler (None).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

LOCAL = ("threads", "processes", "sync", "synchronous")


@contextmanager
def dask_client(scheduler=None, from_env: bool = True):
    """Yield a ``distributed.Client`` or None (the local scheduler); close it if made here."""
    if scheduler is None and from_env:
        import dask

        scheduler = dask.config.get("scheduler-address", None) or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if scheduler is None or scheduler in LOCAL:
        yield None
        return
    if not isinstance(scheduler, str):
        yield scheduler  # the caller's Client: used, not closed
        return
    from distributed import Client

    client = Client(scheduler)
    try:
        yield client
    finally:
        client.close()
