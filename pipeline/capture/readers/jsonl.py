"""JSON lines through Arrow's JSON parser, a block of lines at a time, with their line numbers.

The file (plain, ``.gz`` or ``.zst``) is read in blocks of whole lines; Arrow parses each block
on its threads and :mod:`.normalise` turns it into records. Python's reading stays the
definition: a block Arrow reads differently (two objects on a line, a line Python would skip
but Arrow cannot parse, a missing key, a widened number: see :mod:`.normalise`) or cannot read
at all raises :class:`~.normalise.NotExact`, and the caller reads the file again with the line
reader of :mod:`..corpus`, which also words every error (file, line, field).

Line numbers count every line, blank ones included, as the line reader does: a block's blank
lines are found from its newline positions (numpy), so each row keeps its line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from traitlens.pipeline.capture.corpus import ReadOptions

from .normalise import NotExact, normalise
from .streams import open_bytes

BLOCK_BYTES = 8 << 20
BOM = b"\xef\xbb\xbf"


def jsonl_batches(path: Path, name: str, opts: ReadOptions, block_bytes: int | None = None):
    """Normalised batches of a JSON-lines file, a block of lines (``block_bytes``, default
    :data:`BLOCK_BYTES`) at a time (see the module); raises :class:`NotExact` where the line
    reader must read the file instead."""
    block_bytes = block_bytes or BLOCK_BYTES
    with open_bytes(path) as f:
        carry, lines_before, first = b"", 0, True
        while True:
            chunk = f.read(block_bytes)
            data = carry + chunk
            if first:
                data, first = (data[len(BOM):] if data.startswith(BOM) else data), False
            if chunk:
                cut = data.rfind(b"\n")
                if cut < 0:  # one line longer than a block: read on
                    carry = data
                    continue
                block, carry = data[:cut + 1], data[cut + 1:]
            else:
                block, carry = data, b""
            if block:
                table, rows = _parse(block, lines_before)
                if table.num_rows:  # one batch a block (Arrow parses it in chunks of ~1 MB)
                    for batch in table.combine_chunks().to_batches():
                        n = batch.num_rows
                        yield normalise(batch, rows[:n], path, name, opts, json_source=True)
                        rows = rows[n:]
                lines_before += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            if not chunk:
                return


def _parse(block: bytes, lines_before: int) -> tuple[pa.Table, np.ndarray]:
    """Arrow's table of a block of whole lines and each row's line number (int64 [rows])."""
    rows = _object_lines(block) + lines_before
    try:
        table = pj.read_json(pa.BufferReader(block))
        stamps = [f.name for f in table.schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
        if stamps:  # Arrow reads ISO dates as timestamps; Python keeps the strings
            schema = pa.schema([(n, pa.string()) for n in stamps])
            table = pj.read_json(pa.BufferReader(block), parse_options=pj.ParseOptions(explicit_schema=schema))
        table.validate(full=True)  # Arrow's JSON parser passes bytes that are not UTF-8 through
    except (pa.ArrowException, UnicodeDecodeError):
        raise NotExact from None
    if table.num_rows != len(rows):  # two objects on a line, or a line Arrow skipped and Python would not
        raise NotExact
    return table, rows


def _object_lines(block: bytes) -> np.ndarray:
    """1-based numbers (within the block) of the lines Python's reader does not skip: all but
    the blank ones (``not line.strip()``). int64 [lines kept]."""
    b = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(b == 10)
    if not len(b) or b[-1] != 10:
        ends = np.append(ends, len(b))
    starts = np.concatenate([[0], ends[:-1] + 1])
    keep = b[starts] == ord("{")  # (every start is inside the block: its last line is not empty)  # the usual line; any other is decided by Python's own test
    for i in np.flatnonzero(~keep):
        line = block[starts[i]:ends[i]].decode("utf-8", "replace").rstrip("\r")
        keep[i] = bool(line.strip())
    return np.flatnonzero(keep).astype(np.int64) + 1
