"""Child processes that die with the process that started them, even when it is killed with -9.

A worker outliving its command holds its memory (150 MB and more for an extraction worker)
until someone finds it, and a SIGKILL gives the parent no chance to end it. So every process
traitlens starts binds itself to its parent, first thing:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when its parent
  goes. The kernel counts the *thread* that forked the child as its parent, so start children
  from the thread that owns them for their whole life (a pool made and shut down in one call
  is);
- a parent that died before the ``prctl`` ran is caught by checking ``getppid()`` after it (an
  orphan has been handed to another process by then), and the child leaves at once;
- elsewhere (no ``prctl``), a daemon thread in the child polls the parent pid and ends the
  child once it changes (:data:`WATCH_SECONDS` apart).

:func:`bind_to_parent` is for the child's initializer (a pool's ``initializer``),
:func:`preexec` for ``subprocess.Popen(preexec_fn=...)`` (the binding survives ``exec``; a
watchdog thread does not, so there it is Linux only). POSIX only, as the store's lock is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.5
ORPHAN_EXIT = 1  # what a child whose parent is gone exits with (nobody is left to read it)


def bind_to_parent(parent_pid: int) -> None:
    """In a child process: end it when ``parent_pid`` (the process that started it) ends."""
    if _kill_on_parent_death():
        if os.getppid() != parent_pid:  # the parent died before the prctl: nothing will signal us
            os._exit(ORPHAN_EXIT)
        return
    threading.Thread(target=_watch, args=(parent_pid,), name="traitlens-lifeline", daemon=True).start()


def preexec():
    """A ``preexec_fn`` for ``subprocess.Popen`` binding the child to the calling process (Linux:
    the binding survives ``exec``; elsewhere it does nothing)."""
    parent = os.getpid()

    def bind() -> None:
        if _kill_on_parent_death() and os.getppid() != parent:
            os._exit(ORPHAN_EXIT)
    return bind


def _load_prctl():
    """libc's ``prctl``, or None. Looked up at import, in the parent: a child after ``fork`` runs
    only the call (no ``dlopen``, whose locks another thread of the parent may have held)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _kill_on_parent_death() -> bool:
    """Ask the kernel for SIGKILL when our parent dies; False where there is no ``prctl``."""
    return _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def _watch(parent_pid: int) -> None:
    """The watchdog where ``prctl`` is missing: an orphan is re-parented, so its parent pid changes."""
    while os.getppid() == parent_pid:
        time.sleep(WATCH_SECONDS)
    os._exit(ORPHAN_EXIT)
