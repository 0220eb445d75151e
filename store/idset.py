"""A set of prompt ids that costs bytes per id, not a Python object per id.

A writer must know which prompts a group already holds (so a prompt is never committed twice).
As a Python ``set`` of 10M strings that is ~1 GB per group; here it is one sorted fixed-width
bytes array (24 bytes per content-hash id) plus a small ``set`` of the ids added since, merged
into the array once it passes :data:`MERGE_AT`. Membership of a batch is one binary search.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

MERGE_AT = 262_144


def _as_bytes(ids: Iterable[str] | pa.Array | pa.ChunkedArray | npt.NDArray[np.bytes_]) -> npt.NDArray[np.bytes_]:
    """``ids`` (an Arrow string array or any iterable of str) as a fixed-width bytes array."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if len(arr) == 0:
            return np.zeros(0, "S1")
        lengths = pc.binary_length(arr)
        w = pc.max(lengths).as_py()
        if arr.null_count == 0 and pc.min(lengths).as_py() == w and arr.offset == 0:
            # every id has one length (content hashes do): the data buffer is the array, no copy per id
            fixed: npt.NDArray[np.bytes_] = np.frombuffer(arr.buffers()[2], dtype=f"S{w}", count=len(arr)).copy()
            return fixed
        return np.array([i.encode() for i in arr.to_pylist()], dtype="S")
    return np.array([i.encode() for i in ids], dtype="S") if not isinstance(ids, np.ndarray) else ids


class IdSet:
    """Membership, ``add_all`` and ``len`` of prompt ids (see the module); ``to_set`` for the rest."""

    def __init__(self, ids: Iterable[str] | pa.Array | pa.ChunkedArray = ()) -> None:
        base = _as_bytes(ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids))
        self._base = np.unique(base)
        self._recent: set[str] = set()

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)

    def __contains__(self, pid: str) -> bool:
        if pid in self._recent:
            return True
        if not len(self._base):
            return False
        key = pid.encode()
        if len(key) > self._base.dtype.itemsize:
            return False
        i = np.searchsorted(self._base, key)
        return bool(i < len(self._base) and self._base[i] == key)

    def add_all(self, ids: Iterable[str]) -> None:
        """Add ids not already present (callers add only new ones: the writer checks first)."""
        self._recent.update(ids)
        if len(self._recent) >= MERGE_AT:
            recent = _as_bytes(list(self._recent))
            width = np.promote_types(self._base.dtype, recent.dtype)  # the wider of the two id widths
            self._base = np.unique(np.concatenate([self._base.astype(width), recent.astype(width)]))
            self._recent = set()

    def to_set(self) -> set[str]:
        """Every id as a Python set (for small stores and callers that need one)."""
        return {b.decode() for b in self._base.tolist()} | self._recent
