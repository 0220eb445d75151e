"""Peak resident memory of one block of code, measured inside the running process.

``ru_maxrss`` only ever grows over a process's life, so it cannot separate cases run side by
side. :class:`PeakRSS` returns freed heap to the system first (glibc ``malloc_trim``, so memory
an earlier case freed but the allocator kept does not hide this case's growth), then samples
``/proc/self/statm`` on a thread every few milliseconds and reports the peak above the RSS at
entry: the extra memory that case needed. Linux only (the bench prints "n/a" elsewhere).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.extra`` (bytes above the RSS at entry, or None)."""

    def __init__(self, every_s: float = 0.003):
        self.every_s, self.extra = every_s, None
        self._stop = threading.Event()

    def __enter__(self):
        gc.collect()
        trim_heap()
        self.base = rss_bytes()
        self.peak = self.base
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_bytes() or 0
            self.peak = max(self.peak, now)
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        if self.base is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)
        self.extra = self.peak - self.base
