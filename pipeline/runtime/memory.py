"""Memory freed but kept by the allocators, handed back to the operating system.

Building a contrastive set over a million prompts leaves ~0.5 GB in Arrow's pool and glibc's
heaps that nothing holds any more (measured on the 1M-row store of bench/bench_out_of_core.py:
resident memory 817 MB after the set, 241 MB after this). A memory budget is for the work that
follows, so the caller hands it back before starting that work.
"""

from __future__ import annotations

import ctypes
import sys


def give_back_freed_memory() -> None:
    """Release Arrow's unused pool memory and trim glibc's heaps (Linux); a no-op elsewhere."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl and others: no malloc_trim
            pass
