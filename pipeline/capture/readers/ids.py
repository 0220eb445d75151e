"""Prompt ids of a whole column at once (DuckDB's ``sha256``, many rows per call).

The values are those of :func:`~traitlens.pipeline.capture.corpus.prompt_id_for`, a row at a
time in Python (tests/test_readers.py holds them equal on unicode, control characters and long
texts): a store's ids never depend on which reader read the corpus. Chat prompts are hashed by
the per-record function (their payload is Python's ``json.dumps``). Splits are not the
reader's: the ingest's plan assigns them, stratified by label (:mod:`..splits`).
"""

from __future__ import annotations

import threading

import pyarrow as pa

_LOCAL = threading.local()  # one in-memory DuckDB per thread: making one costs ~30 ms, a batch's hashing less


def _connection():
    con = getattr(_LOCAL, "con", None)
    if con is None:
        import duckdb

        con = _LOCAL.con = duckdb.connect(":memory:")
    return con


def text_ids(texts: pa.Array) -> pa.Array:
    """The prompt ids of plain-text prompts: a string array [n] of ``sha256("t:" + text)[:24]``.
    ``texts``: a string array without nulls, valid UTF-8."""
    con = _connection()
    try:
        con.register("texts", pa.table({"text": texts}))
        out = con.sql("SELECT substr(sha256('t:' || text), 1, 24) AS pid FROM texts").to_arrow_table()
    finally:
        con.unregister("texts")
    return out.column("pid").combine_chunks()
