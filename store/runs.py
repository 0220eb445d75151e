"""The run-record lifecycle, written once for every stage (ingest, extract, workflow, interop).

``with store.run("ingest", config) as run:`` records the run as ``running`` once the stage
calls ``run.start()`` (a stage with nothing to do never calls it, so a no-op writes nothing),
then, whatever happens, its end: ``done``; ``interrupted`` for Ctrl-C or SIGTERM (a
``KeyboardInterrupt``; the exception's ``exit_code`` tells them apart); ``failed`` with the
error for anything else. The exception is re-raised. ``run.counts`` and ``run.message`` go into
the final record (on a bad ending the message follows the reason: say there what was kept). ``lock=True`` takes the writer lock just for each record (stages that compute
for minutes without holding it, like extract).

A process killed outright (``kill -9``, the OOM killer, a power cut) records no end: its run
stays ``running``. Every record keeps the pid and host that wrote it and whether that process
held the writer lock for the run's whole life, so the next command that takes the lock
(:func:`mark_killed`, called by :meth:`Store.lock <traitlens.store.Store.lock>`) can tell: a
run that held the lock cannot be alive while another process holds it, and a run of this host
whose process is gone (or whose pid now belongs to a younger process) is dead. It records such
runs as ``killed``, stamped with the time it noticed. A run on another host that computes
without the lock (extract) cannot be judged from here and stays ``running``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, Protocol

import pyarrow as pa

from .location import StorePath
from .strict_json import dumps as strict_dumps  # a NaN count is null with its reason, never bare NaN


class RunsStore(Protocol):
    """What run records need of a :class:`~traitlens.store.store.Store` (which imports this module)."""

    @property
    def root(self) -> StorePath: ...
    def lock(self, what: str = "write") -> AbstractContextManager[None]: ...
    def record_run(self, run: dict[str, Any]) -> None: ...
    def runs(self) -> pa.Table: ...


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
    return int(getattr(e, "exit_code", 130))


def interrupt_reason(e: BaseException) -> str:
    """``terminated (SIGTERM)`` or ``interrupted (Ctrl-C)``, from the exception's exit code."""
    return "terminated (SIGTERM)" if interrupt_exit_code(e) == 143 else "interrupted (Ctrl-C)"


class Run:
    """One run's records in the ``runs`` table (see the module docstring)."""

    def __init__(self, store: RunsStore, stage: str, config: dict[str, Any], run_id: str | None = None,
                 lock: bool = False) -> None:
        self.store, self.stage, self.lock = store, stage, lock
        self.run_id = run_id or new_run_id(stage)
        self.config = strict_dumps(config, default=str)
        self.started_at = now_utc()
        self.started = False
        self.counts: dict[str, Any] = {}
        self.message = ""
        self.status = "done"
        self.held_lock: bool | None = None  # whether the writer lock is held for the run's whole life

    def _record(self, **fields: object) -> None:
        from .lock import holds_lock

        if self.held_lock is None:  # decided once, before this record takes the lock itself
            self.held_lock = holds_lock(self.store.root)
        rec = {"run_id": self.run_id, "stage": self.stage, "started_at": self.started_at,
               "code_version": code_version(), "config": self.config, "pid": os.getpid(), "host": this_host(),
               "held_lock": self.held_lock, **fields}
        with self.store.lock(f"{self.stage} (run record)") if self.lock else nullcontext():
            self.store.record_run(rec)

    def start(self) -> "Run":
        """Record the run as running (once); a run never started writes no record at all."""
        if not self.started:
            self._record(status="running")
            self.started = True
        return self

    def end(self, status: str, message: str = "") -> None:
        self._record(status=status, ended_at=now_utc(), counts=strict_dumps(self.counts, default=str),
                     message=message or self.message)


@contextmanager
def run_record(store: RunsStore, stage: str, config: dict[str, Any], run_id: str | None = None, lock: bool = False,
               start: bool = True) -> Iterator[Run]:
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


# -- runs whose process died without recording an end ---------------------------------------------
def this_host() -> str:
    """The host name, with the pid namespace where it is known (two containers on one machine
    may share a name, never a pid namespace): pids are compared only within one of these."""
    name = socket.gethostname()
    try:
        return f"{name}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


# stages that hold the writer lock from their first record to their last (records made before
# runs kept ``held_lock``); extract computes without it
_LOCKED_STAGES = {"ingest", "ingest-cache", "score", "replies", "workflow"}


def is_gone(run: dict[str, Any], lock_held: bool) -> bool:
    """Whether a ``running`` run's process has ended without recording it. ``lock_held``: the
    caller holds the store's writer lock (then a run that held it throughout is over)."""
    if run.get("status") != "running":
        return False
    pid, host = run.get("pid"), run.get("host")
    if pid is not None and host == this_host():
        return pid != os.getpid() and not process_alive(int(pid), run.get("started_at"))
    held = run.get("held_lock")
    return lock_held and (held if held is not None else run.get("stage") in _LOCKED_STAGES and pid is None)


def process_alive(pid: int, started_at: datetime | None) -> bool:
    """The process ``pid`` of this host runs, and is not a younger one that reused the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # killed, waiting for its parent to reap it
        born = proc.create_time()
    except ImportError:
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    return started_at is None or born <= started_at.timestamp() + 1.0  # 1 s: clock granularity


def killed_message(run: dict[str, Any], noticed_by: str) -> str:
    return (f"killed: its process (pid {run.get('pid', '?')} on {run.get('host') or '?'}) ended without recording "
            f"an end (kill -9, the OOM killer, a lost machine); noticed by {noticed_by}; what it committed is "
            "kept: rerun the same command to finish")


def mark_killed(store: RunsStore, noticed_by: str) -> list[str]:
    """Record every ``running`` run whose process is gone as ``killed`` (call holding the
    writer lock); returns their run ids. Best effort: a runs table that does not read is left
    to ``verify`` (this must never stop the command that took the lock, ``verify --repair``
    least of all)."""
    from .errors import TraitlensError

    try:
        runs = store.runs().to_pylist()
        dead = [r for r in runs if is_gone(r, lock_held=True)]
        stamp = now_utc()
        for r in dead:
            store.record_run({**r, "status": "killed", "ended_at": stamp, "message": killed_message(r, noticed_by)})
    except (TraitlensError, OSError):  # a damaged runs part: verify names it, and --repair moves it aside
        return []
    return [r["run_id"] for r in dead]
