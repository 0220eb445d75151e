"""One writer per store: an advisory ``flock`` on ``<store>/.lock``.

The kernel drops the lock when its process dies, so a lock left by a killed run never blocks
the next one; the file's content (pid, host, command) only serves the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class StoreLocked(RuntimeError):
    """Another live process is writing to this store."""


_held: dict[str, int] = {}  # lock files this process holds -> nesting depth (flock is per open file)


@contextmanager
def write_lock(root: Path, what: str = "write"):
    """Hold the store's writer lock for the duration of the block, or raise :class:`StoreLocked`.

    Re-entrant within one process (a workflow run holds it around its ingest and extract steps).
    """
    path = root / ".lock"
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(Path(path).read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            raise StoreLocked(
                f"store {root} is being written by another run "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('what', '?')} "
                f"since {holder.get('since', '?')}); wait for it to finish, or use another --store"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
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
