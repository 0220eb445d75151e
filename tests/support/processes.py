"""Real processes in tests: wait for a state rather than a clock, find a process's children, and
leave nothing running. A test triggers its signal on something it can see (a file appearing,
workers existing), never after a sleep a fast machine outruns or a slow one never reaches."""

from __future__ import annotations

import os
import signal
import time

PATIENCE = 120.0  # seconds to wait for what happens at once on an idle machine: only a hang is slower


def wait_until(condition, patience: float = PATIENCE, every: float = 0.01) -> bool:
    """Poll ``condition()`` until it is true (True) or ``patience`` seconds have passed (False)."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, their children, ...)."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids) -> list[int]:
    """Those of ``pids`` still running (a zombie waiting for its reaper has ended)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def sigkill_if_running(p) -> bool:
    """SIGKILL the ``subprocess.Popen`` ``p`` if it still runs, then reap it (a test's kill, or its
    cleanup in ``finally``). True when it was running, so the kill landed on a live process."""
    running = p.poll() is None
    if running:
        p.send_signal(signal.SIGKILL)
    p.wait()
    return running


def end_all(pids) -> None:
    """SIGKILL whatever of ``pids`` still runs (a test's cleanup, whatever it found)."""
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
