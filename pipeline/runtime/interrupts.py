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


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held():
    """Within the block, Ctrl-C and SIGTERM wait, and are delivered as it ends. For forking: a
    signal whose handler runs inside an at-fork hook (logging registers one) raises there, where
    Python prints "Exception ignored" and drops it, so the command carried on and exited 0. In
    the block the handlers only note a signal (another thread may take it), and the calling
    thread (the main one) blocks both, so a child forked in the block starts with them blocked
    and lets them through once its own handlers are set (:func:`let_interrupts_through`)."""
    came: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in INTERRUPTS}
    except ValueError:  # not the main thread (an embedding app): leave signals alone
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (one still pending arrives here)
        for s in dict.fromkeys(came):
            signal.raise_signal(s)


def let_interrupts_through() -> None:
    """In a child forked inside :func:`interrupts_held`: deliver Ctrl-C and SIGTERM again
    (one that came meanwhile arrives now, to the handlers the child has set)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
