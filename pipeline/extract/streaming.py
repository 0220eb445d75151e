"""Selected rows of one layer array, streamed block by block, for fits that do not fit in memory.

An optimiser that streams the data (the out-of-core probe: one pass per L-BFGS step) would
otherwise decode every Zstd chunk again on every pass. :class:`RowStream` keeps the blocks it
has read, as stored (float16), while its cache budget lasts, so later passes convert them from
memory and read only the rest from the store. Each block is read as one contiguous slice of
the array (a train split selects most rows, and a slice decodes much faster than a fancy index)
and the selected rows are taken from it.

Shapes: ``rows`` int64 ``[n]`` ascending row indices, ``pos`` bool ``[n]``; blocks are
``(X float32 [m, d], pos [m], start)`` where ``start`` is the block's offset into ``rows``.
"""

from __future__ import annotations

import numpy as np

from traitlens.store.arrays import read_rows_checked

# read a block as a slice when at least this share of the rows it spans is selected
SLICE_DENSITY = 0.25
# rows a one-pass reader (audit, scoring) holds at a time: memory does not grow with the store
BLOCK_ROWS = 16384


def read_block(arr, rows: np.ndarray) -> np.ndarray:
    """Rows (ascending) of a layer array, in the array's dtype ``[len(rows), d]``."""
    if len(rows) == 0:
        return np.zeros((0, arr.shape[1]), dtype=arr.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if len(rows) >= SLICE_DENSITY * (hi - lo):
        span = read_rows_checked(arr, slice(lo, hi))
        return span if len(rows) == hi - lo else span[rows - lo]
    return read_rows_checked(arr, rows)


class RowStream:
    """Callable: each call is one pass over the selected rows (see the module docstring)."""

    def __init__(self, arr, rows: np.ndarray, pos: np.ndarray, block_rows: int, cache_bytes: int = 0):
        self.arr, self.rows, self.pos = arr, rows, pos
        self.block_rows = max(1, int(block_rows))
        self.cache_bytes = cache_bytes
        self.cache: dict[int, np.ndarray] = {}
        self.cached = 0

    def blocks(self):
        """Yield ``(X float32 [m, d], pos [m], start)`` for one pass. (Reading the next block on
        a second thread was measured: no faster, the zarr read and the cast hold the GIL.)"""
        for start in range(0, len(self.rows), self.block_rows):
            X = self._load(start)
            yield X, self.pos[start:start + len(X)], start

    def _load(self, start: int) -> np.ndarray:
        """One block as float32; cached as stored while the cache budget lasts."""
        raw = self.cache.get(start)
        if raw is None:
            raw = read_block(self.arr, self.rows[start:start + self.block_rows])
            if self.cached + raw.nbytes <= self.cache_bytes:
                self.cache[start] = raw
                self.cached += raw.nbytes
        return raw.astype(np.float32, copy=False)

    def project(self, vector) -> np.ndarray:
        """One pass: every selected row's projection onto ``vector`` ``[d]``, float64 ``[n]``."""
        v = np.asarray(vector, dtype=np.float32)
        if not len(self.rows):
            return np.zeros(0)
        return np.concatenate([X @ v for X, _, _ in self.blocks()]).astype(np.float64)

    def __call__(self):
        """``(X, pos)`` pairs for one pass: the ``chunks()`` factory the streaming fits take."""
        return ((X, p) for X, p, _ in self.blocks())
