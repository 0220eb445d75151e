"""Prompt ids and hash splits of a whole column at once (DuckDB's ``sha256``, many rows per call).

The values are those of :func:`~traitlens.pipeline.capture.corpus.prompt_id_for` and
:func:`~traitlens.pipeline.capture.corpus.hash_split`, a row at a time in Python (tests/
test_readers.py holds them equal on unicode, control characters and long texts): a store's
ids never depend on which reader read the corpus. Chat prompts are hashed by the per-record
function (their payload is Python's ``json.dumps``).
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from traitlens.pipeline.capture.corpus import SPLIT_FRACTIONS

_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


_LOCAL = threading.local()  # one in-memory DuckDB per thread: making one costs ~30 ms, a batch's hashing less


def _connection():
    con = getattr(_LOCAL, "con", None)
    if con is None:
        import duckdb

        con = _LOCAL.con = duckdb.connect(":memory:")
    return con


def text_ids_and_splits(texts: pa.Array, fractions=SPLIT_FRACTIONS) -> tuple[pa.Array, np.ndarray]:
    """``(prompt_ids, splits)`` of plain-text prompts: ``prompt_ids`` a string array [n] of
    ``sha256("t:" + text)[:24]``, ``splits`` an object array [n] of train/val/test from
    ``sha256("split:" + prompt_id)``. ``texts``: a string array without nulls, valid UTF-8."""
    con = _connection()
    try:
        con.register("texts", pa.table({"text": texts}))
        out = con.sql("SELECT pid, substr(sha256('split:' || pid), 1, 8) AS h FROM "
                      "(SELECT substr(sha256('t:' || text), 1, 24) AS pid FROM texts)").to_arrow_table()
    finally:
        con.unregister("texts")
    return out.column("pid").combine_chunks(), splits_from_hex(out.column("h"), fractions)


def splits_from_hex(hex8, fractions=SPLIT_FRACTIONS) -> np.ndarray:
    """train/val/test from 8 hex digits a row (``hash_split``'s ``u = int(hex, 16) / 2**32``)."""
    arr = hex8.combine_chunks() if isinstance(hex8, pa.ChunkedArray) else hex8
    arr = arr.cast(pa.string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, object)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, count=n + 1, offset=4 * arr.offset)
    if arr.null_count or offsets[-1] - offsets[0] != 8 * n:
        raise ValueError("expected 8 hex digits a row")
    digits = np.frombuffer(arr.buffers()[2], np.uint8, count=8 * n, offset=int(offsets[0])).reshape(n, 8)
    nibbles = _HEX[digits].astype(np.uint64)
    value = np.zeros(n, np.uint64)
    for j in range(8):
        value = (value << np.uint64(4)) | nibbles[:, j]
    u = value.astype(np.float64) / 2**32  # exact: below 2**32, divided by a power of two
    return np.where(u < fractions[0], "train", np.where(u < fractions[0] + fractions[1], "val", "test")).astype(object)
