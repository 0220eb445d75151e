"""Selected rows of one layer array, streamed block by block, for fits that do not fit in memory.

An optimiser that streams the data (the out-of-core probe: one pass per L-BFGS step) would
otherwise decode every Zstd chunk again on every pass. :class:`RowStream` keeps the blocks it
has read, as stored (float16), while its cache budget lasts, so later passes convert them from
memory and read only the rest from the store. Each block is read as one contiguous slice of
the array (a train split selects most rows, and a slice decodes much faster than a fancy index)
and the selected rows are taken from it.

Two things keep a pass near the store's read speed: the next block is read on a second thread
while the caller works on this one (zarr's decode, BLAS and the casts below all release the
GIL), and float16 becomes float32 in one buffer the stream reuses, by torch's vectorised
conversion when torch is loaded (4x numpy's on this machine's AVX-512, and no fresh 38 MB
allocation to fault in per block).

Shapes: ``rows`` int64 ``[n]`` ascending row indices, ``pos`` bool ``[n]``; blocks are
``(X float32 [m, d], pos [m], start)`` where ``start`` is the block's offset into ``rows``.
"""

from __future__ import annotations

import sys
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from traitlens.store.arrays import read_rows_checked

# read a block as a slice when at least this share of the rows it spans is selected
SLICE_DENSITY = 0.25
# rows a one-pass reader (audit, scoring) holds at a time: memory does not grow with the store
BLOCK_ROWS = 16384
# values to convert from float16 above which torch's import (~2 s, ~180 MB) pays for itself:
# its conversion saves ~1.2 ns a value against numpy's (measured on this 2-core machine)
TORCH_CAST_VALUES = 2_000_000_000


def read_block(arr, rows: np.ndarray) -> np.ndarray:
    """Rows (ascending) of a layer array, in the array's dtype ``[len(rows), d]``."""
    if len(rows) == 0:
        return np.zeros((0, arr.shape[1]), dtype=arr.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if len(rows) >= SLICE_DENSITY * (hi - lo):
        span = read_rows_checked(arr, slice(lo, hi))
        return span if len(rows) == hi - lo else span[rows - lo]
    return read_rows_checked(arr, rows)


def as_float32(raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``raw`` [m, d] as float32 in ``out[:m]`` (returned); float32 input is returned as it is.
    torch converts when something has already paid for its import (see the module docstring)."""
    if raw.dtype == np.float32:
        return raw
    view = out[:len(raw)]
    torch = sys.modules.get("torch")
    if torch is not None and raw.flags.writeable:  # (torch warns on read-only arrays)
        torch.from_numpy(view).copy_(torch.from_numpy(raw))
    else:
        np.copyto(view, raw)
    return view


def load_fast_cast(values: int) -> bool:
    """Import torch for :func:`as_float32` when a job will convert at least ``values`` float16
    values and it pays (``TORCH_CAST_VALUES``); True when torch is loaded."""
    if "torch" not in sys.modules and values >= TORCH_CAST_VALUES:
        import torch  # noqa: F401
    return "torch" in sys.modules


class RowStream:
    """Callable: each call is one pass over the selected rows (see the module docstring).

    A block's ``X`` lives in a buffer the next block overwrites: use it, or copy what you keep,
    before asking for the next."""

    def __init__(self, arr, rows: np.ndarray, pos: np.ndarray, block_rows: int, cache_bytes: int = 0):
        self.arr, self.rows, self.pos = arr, rows, pos
        self.block_rows = max(1, int(block_rows))
        self.cache_bytes = cache_bytes
        self.cache: dict[int, np.ndarray] = {}
        self.cached = 0
        self._buffer: np.ndarray | None = None
        self._reader: ThreadPoolExecutor | None = None

    def blocks(self):
        """Yield ``(X float32 [m, d], pos [m], start)`` for one pass, reading the next block
        while the caller works on this one."""
        starts = range(0, len(self.rows), self.block_rows)
        if not len(starts):
            return
        reader = self._reader_thread()
        ahead = reader.submit(self._raw, starts[0])
        try:
            for i, start in enumerate(starts):
                raw = ahead.result()
                if i + 1 < len(starts):
                    ahead = reader.submit(self._raw, starts[i + 1])
                X = as_float32(raw, self._float32_buffer())
                yield X, self.pos[start:start + len(X)], start
        finally:
            ahead.cancel() or ahead.exception()  # a pass left early waits for its last read

    def _reader_thread(self) -> ThreadPoolExecutor:
        """One reader thread for the stream's life (a thread per pass would leave each pass's
        freed blocks in a fresh malloc arena: measured +36 MB resident per pass)."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="traitlens-read")
            weakref.finalize(self, self._reader.shutdown, wait=False)
        return self._reader

    def _float32_buffer(self) -> np.ndarray:
        if self._buffer is None:
            self._buffer = np.empty((min(self.block_rows, len(self.rows)), self.arr.shape[1]), np.float32)
        return self._buffer

    def _raw(self, start: int) -> np.ndarray:
        """One block as stored; cached while the cache budget lasts."""
        raw = self.cache.get(start)
        if raw is None:
            raw = read_block(self.arr, self.rows[start:start + self.block_rows])
            if self.cached + raw.nbytes <= self.cache_bytes:
                self.cache[start] = raw
                self.cached += raw.nbytes
        return raw

    def project(self, vector) -> np.ndarray:
        """One pass: every selected row's projection onto ``vector`` ``[d]``, float64 ``[n]``."""
        v = np.asarray(vector, dtype=np.float32)
        if not len(self.rows):
            return np.zeros(0)
        return np.concatenate([X @ v for X, _, _ in self.blocks()]).astype(np.float64)

    def __call__(self):
        """``(X, pos)`` pairs for one pass: the ``chunks()`` factory the streaming fits take."""
        return ((X, p) for X, p, _ in self.blocks())
