"""The run-record lifecycle, written once for every stage (ingest, extract, workflow, interop).

``with store.run("ingest", config) as run:`` records the run as ``running`` once the stage
calls ``run.start()`` (a stage with nothing to do never calls it, so a no-op writes nothing),
then, whatever happens, its end: ``done``; ``interrupted`` for Ctrl-C or SIGTERM (a
``KeyboardInterrupt``; the exception's ``exit_code`` tells them apart); ``failed`` with the
error for anything else. The exception is re-raised. ``run.counts`` and ``run.message`` go into
the final record (on a bad ending the message follows the reason: say there what was kept). ``lock=True`` takes the writer lock just for each record (stages that compute
for minutes without holding it, like extract).
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("traitlens")
    except Exception:  # running from a checkout that is not installed
        return "unknown"


def new_run_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def interrupt_exit_code(e: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (also when re-raised wrapped, e.g. IngestInterrupted)."""
    return getattr(e, "exit_code", 130)


def interrupt_reason(e: BaseException) -> str:
    """``terminated (SIGTERM)`` or ``interrupted (Ctrl-C)``, from the exception's exit code."""
    return "terminated (SIGTERM)" if interrupt_exit_code(e) == 143 else "interrupted (Ctrl-C)"


class Run:
    """One run's records in the ``runs`` table (see the module docstring)."""

    def __init__(self, store, stage: str, config: dict, run_id: str | None = None, lock: bool = False):
        self.store, self.stage, self.lock = store, stage, lock
        self.run_id = run_id or new_run_id(stage)
        self.config = json.dumps(config, default=str)
        self.started_at = now_utc()
        self.started = False
        self.counts: dict = {}
        self.message = ""
        self.status = "done"

    def _record(self, **fields) -> None:
        rec = {"run_id": self.run_id, "stage": self.stage, "started_at": self.started_at,
               "code_version": code_version(), "config": self.config, **fields}
        with self.store.lock(f"{self.stage} (run record)") if self.lock else nullcontext():
            self.store.record_run(rec)

    def start(self) -> "Run":
        """Record the run as running (once); a run never started writes no record at all."""
        if not self.started:
            self._record(status="running")
            self.started = True
        return self

    def end(self, status: str, message: str = "") -> None:
        self._record(status=status, ended_at=now_utc(), counts=json.dumps(self.counts, default=str),
                     message=message or self.message)


@contextmanager
def run_record(store, stage: str, config: dict, run_id: str | None = None, lock: bool = False, start: bool = True):
    """Yield a :class:`Run`; record how it ended (see the module docstring)."""
    run = Run(store, stage, config, run_id, lock)
    if start:
        run.start()
    try:
        yield run
    except KeyboardInterrupt as e:
        run.status = "interrupted"
        _end_quietly(run, "interrupted", f"{interrupt_reason(e)}; {run.message or 'rerun the same command to continue'}")
        raise
    except BaseException as e:
        run.status = "failed"
        _end_quietly(run, "failed", f"{type(e).__name__}: {e}" + (f"; {run.message}" if run.message else ""))
        raise
    else:
        if run.started:
            run.end(run.status)


def _end_quietly(run: Run, status: str, message: str) -> None:
    """Record a bad ending where the store can take it (it may be locked, or be why it failed):
    the original error is never hidden by a second one."""
    from .errors import TraitlensError

    if not run.started:
        return  # a run that never started (nothing to do) leaves no record, however it ends
    try:
        run.end(status, message)
    except (TraitlensError, OSError):
        pass
