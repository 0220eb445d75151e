"""The one error base class: every failure traitlens explains carries its CLI exit code.

The CLI catches :class:`TraitlensError` alone and prints its message on one line; each stage
subclasses it (``StoreError``, ``QueryError``, ``CorpusError``, ``ModelError``, ...), keeping
the builtin base it always had (``ValueError`` for bad input) so callers' ``except`` clauses
still work. Lives in the store package, the bottom layer, so every layer can import it without
pulling in torch.
"""

from __future__ import annotations

EXIT_FAIL, EXIT_INPUT, EXIT_LOCKED = 1, 2, 3


class TraitlensError(Exception):
    """A failure whose message says what to do; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAIL


class InputError(TraitlensError, ValueError):
    """Bad input or usage: an option, a corpus record, a spec value, a query (exit 2)."""

    exit_code = EXIT_INPUT


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C (it is a ``KeyboardInterrupt``), exits 143 (128 + 15).
    Raised by the CLI's SIGTERM handler (``traitlens.pipeline.runtime.interrupts``) and by a query that
    SIGTERM stopped."""

    exit_code = 143
