"""SIGTERM handled like Ctrl-C: the work in hand stops at once, what is complete is committed.

Schedulers (systemd, Kubernetes, cron wrappers with ``timeout``) stop jobs with SIGTERM. Python's
default is to die on the spot, which leaves the run recorded as ``running`` and drops batches
that were already captured. :func:`terminate_as_interrupt` turns SIGTERM into
:class:`Terminated`, a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` path that
commits and records ``interrupted`` runs for it too. ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

from traitlens.store.errors import Terminated
from traitlens.store.runs import interrupt_exit_code, interrupt_reason  # noqa: F401  (re-exported for the CLI)


def _raise_terminated(signum, frame):
    raise Terminated("terminated (SIGTERM)")


@contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding app): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
