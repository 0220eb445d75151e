"""The one reader interface: a corpus's normalised batches, source by source.

:func:`source_attempts` gives, for one source, the ways to read it in the order to try them:
the fast one first (Arrow's JSON parser for JSON lines), then the definition (the line reader).
Only the last never raises :class:`~.normalise.NotExact`; a caller that stored a source's
batches drops them when an attempt gives way (:mod:`..plan` writes each source to its own
part for that).
"""

from __future__ import annotations

from typing import Callable, Iterator

import pyarrow as pa

from traitlens.pipeline.capture.corpus import ReadOptions, read_lines

from .columnar import arrow_batches, parquet_batches
from .jsonl import jsonl_batches
from .normalise import COLUMNS
from .sources import Source

LINE_BATCH = 65_536  # records of the line readers gathered per batch

Attempt = Callable[[], Iterator[pa.RecordBatch]]


def source_attempts(src: Source, opts: ReadOptions) -> list[Attempt]:
    """The ways to read ``src``, fastest first (see the module)."""
    if src.split is not None:  # a DatasetDict's split is the records' own, before --split
        from dataclasses import replace

        opts = replace(opts, split=src.split)
    lines = lambda: line_batches(src, opts)  # noqa: E731
    if src.kind == "jsonl":
        return [lambda: jsonl_batches(src.path, src.name, opts), lines]
    if src.kind == "parquet":
        return [lambda: parquet_batches(src.path, src.name, opts)]
    if src.kind == "arrow":
        return [lambda: arrow_batches(src.path, src.name, opts)]
    return [lines]


def line_batches(src: Source, opts: ReadOptions, size: int | None = None):
    """The line reader's records of ``src``, gathered ``size`` (default :data:`LINE_BATCH`) at a time."""
    size = size or LINE_BATCH
    cols: dict[str, list] = {c: [] for c in COLUMNS.names}
    for rec in read_lines(src.path, src.kind, src.name, opts):
        row = rec.as_row()
        for c in ("prompt_id", "dataset", "trait", "label", "split", "source", "text", "messages"):
            cols[c].append(row[c])
        cols["extra"].append(row["extra"] if rec.extra else None)
        if len(cols["source"]) >= size:
            yield pa.RecordBatch.from_pydict(cols, schema=COLUMNS)
            cols = {c: [] for c in COLUMNS.names}
    if cols["source"]:
        yield pa.RecordBatch.from_pydict(cols, schema=COLUMNS)
