"""One writer per store.

Local stores: an advisory ``flock`` on ``<store>/.lock``. The kernel drops the lock when its
process dies, so a lock left by a killed run never blocks the next one; the file's content
(pid, host, command) only serves the error message.

Stores on object storage have no flock: the lock is a lease object ``<store>/.lock`` holding
its owner's token and an expiry, renewed by a heartbeat thread every third of its lifetime
(``TRAITLENS_LEASE_SECONDS``, default 60). A dead writer stops renewing, so its lease expires
and the next run takes it over. Taking a free lease writes it, waits a moment and reads it back;
of two runs racing for one store, the one whose token is not read back gives way. (Object
stores offer no compare-and-swap through fsspec; the settle time closes the window in practice,
not in theory: schedule one writer per remote store.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from .errors import EXIT_LOCKED, TraitlensError
from .location import StorePath, as_local, capabilities, shown


class StoreLocked(TraitlensError, RuntimeError):
    """Another live process is writing to this store (exit 3, so cron wrappers can tell it apart)."""

    exit_code = EXIT_LOCKED


_held: dict[str, int] = {}  # lock files this process holds -> nesting depth (flock is per open file)


@contextmanager
def write_lock(root: StorePath, what: str = "write") -> Iterator[None]:
    """Hold the store's writer lock for the duration of the block, or raise :class:`StoreLocked`.

    Re-entrant within one process (a workflow run holds it around its ingest and extract steps).
    """
    path = root / ".lock"
    key = shown(path)
    if _held.get(key):  # (holds_lock below reads the same key)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    if not capabilities(root).file_locks:
        with _lease(root, path, what):
            _held[key] = 1
            try:
                yield
            finally:
                _held.pop(key, None)
        return
    fd = os.open(as_local(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(as_local(path).read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            raise StoreLocked(
                f"store {root} is being written by another run "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('what', '?')} "
                f"since {holder.get('since', '?')}); wait for it to finish, or use another --store"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "token": uuid.uuid4().hex,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[:6]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
    finally:
        os.close(fd)  # closing releases the flock


def holder_token(root: StorePath) -> str | None:
    """The token of the run that holds (or last held) the writer lock: a Dask worker writing on
    a run's behalf checks it right before each write, so a task that outlived its run (its
    driver died and another run took the lock) writes nothing."""
    info = _read_lease(root / ".lock")
    token = info.get("token") if info else None
    return None if token is None else str(token)


def holds_lock(root: StorePath) -> bool:
    """True while this process holds the store's writer lock."""
    return bool(_held.get(shown(root / ".lock")))


def lease_seconds() -> float:
    return float(os.environ.get("TRAITLENS_LEASE_SECONDS", "60"))


def _read_lease(path: StorePath) -> dict[str, Any] | None:
    try:
        lease: dict[str, Any] = json.loads(path.read_text() or "{}")
        return lease
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # torn or foreign content: treat as expired


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _lease(root: StorePath, path: StorePath, what: str, settle: float = 0.5) -> Iterator[None]:
    """Hold a heartbeat-renewed lease object at ``path`` (object storage)."""
    ttl = lease_seconds()
    held = _read_lease(path)
    now = time.time()
    if held and held.get("expires", 0) > now:
        raise StoreLocked(
            f"store {root} is being written by another run (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
            f"{held.get('what', '?')} since {held.get('since', '?')}; its lease runs to {_iso(held['expires'])} "
            "and is renewed while that run lives); wait for it to finish, or use another --store"
        )
    token = uuid.uuid4().hex
    info = {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[:6]}

    def write() -> None:
        path.write_text(json.dumps({**info, "expires": time.time() + ttl}))

    write()
    time.sleep(settle)  # a racing writer's lease lands in this window; whoever is read back wins
    back = _read_lease(path) or {}
    if back.get("token") != token:
        raise StoreLocked(f"store {root}: another run (pid {back.get('pid', '?')} on {back.get('host', '?')}) "
                          "took the writer lease at the same moment; wait for it to finish, or use another --store")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl / 3):
            try:
                now = _read_lease(path) or {}
                if now.get("token") not in (None, token):  # renewals missed so long that another run took over
                    warnings.warn(f"store {root}: the writer lease was taken over by pid {now.get('pid', '?')} on "
                                  f"{now.get('host', '?')} after {ttl:.0f} s without renewal; not renewing it",
                                  RuntimeWarning, stacklevel=1)
                    return
                write()
            except Exception:  # a missed renewal is retried; the lease lasts three periods
                pass

    beat = threading.Thread(target=heartbeat, name="traitlens-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if (_read_lease(path) or {}).get("token") == token:
            path.unlink()
