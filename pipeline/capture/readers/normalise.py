"""Arrow batches of corpus rows -> the scan's columns, under :func:`..corpus.record_from_object`'s rules.

A row of a columnar file is the object ``{column: value}`` (``batch.to_pylist()``); its record
is what :func:`~traitlens.pipeline.capture.corpus.record_from_object` makes of that object. The
common case, plain-text rows whose text, label, trait, dataset and split are clean scalars, is
computed a column at a time: ids hashed by DuckDB (:mod:`.ids`), labels, traits,
datasets and splits mapped once per distinct value. Every other row (a chat, a null or blank
text, a value only Python's rules decide) goes through ``record_from_object`` itself, so both
paths give the same record; tests/test_readers.py checks them against each other.

JSON lines parsed by Arrow (:mod:`.jsonl`) need one more guarantee: that Arrow's reading of the
block equals Python's ``json.loads`` of each line. Arrow cannot tell a missing key from a null,
widens ints to floats in a mixed column and unites the keys of nested objects, so a block that
shows any of these raises :class:`NotExact` (as does any error), and the file is read again by
the line reader, which decides and words the error. What remains different is the order of
keys inside ``extra`` (Arrow's column order; the same JSON object).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traitlens.pipeline.capture.corpus import (LABEL_FIELDS, RESERVED, TEXT_FIELDS, CorpusError, ReadOptions,
                                               parse_label, parse_split, record_from_object)

from .ids import text_ids

COLUMNS = pa.schema([("prompt_id", pa.string()), ("dataset", pa.string()), ("trait", pa.string()),
                     ("label", pa.int8()), ("split", pa.string()), ("source", pa.string()), ("text", pa.string()),
                     ("messages", pa.string()), ("extra", pa.string())])  # messages and extra as JSON
# str.strip()'s characters (str.isspace), the highest being U+3000; "" for an empty text
WHITESPACE = pa.array([""] + [c for c in map(chr, range(0x3001)) if c.isspace()])
EXACT_DOUBLE = 2.0 ** 53  # past it a JSON integer read into a float column may have lost digits


class NotExact(Exception):
    """Arrow's reading of a JSON block could differ from Python's: read the file line by line."""


class _RowByRow(Exception):
    """A column the vectorised path does not handle: the whole batch goes through the rules."""


def empty() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], COLUMNS)


def normalise(batch: pa.RecordBatch, rows: np.ndarray, path: Path, name: str, opts: ReadOptions,
              split: str | None = None, json_source: bool = False) -> pa.RecordBatch:
    """The records of ``batch`` as a batch of :data:`COLUMNS`, in row order.

    ``rows``: int64 [n], each row's line (JSON) or 1-based row number (columnar files), for
    ``source`` and error messages; ``name``: the default trait and dataset; ``split``: the
    source's own split (a DatasetDict's), which a record's ``split`` field overrides."""
    if split is not None:
        opts = replace(opts, split=split)
    if batch.num_rows == 0:
        return empty()
    try:
        if json_source:
            _check_json_block(batch, opts)
        try:
            return _vectorised(batch, rows, path, name, opts)
        except _RowByRow:
            return _row_by_row(batch, rows, np.arange(batch.num_rows), path, name, opts)
    except CorpusError:
        if json_source:
            raise NotExact from None  # the line reader words the error, with the first bad line
        raise


def check_columns(schema: pa.Schema, path: Path, opts: ReadOptions) -> None:
    """A columnar file must have a column to read prompts from; say which it has, and the flags."""
    names = schema.names
    for flag, col in (("--text-column", opts.text_column), ("--messages-column", opts.messages_column),
                      ("--label-column", opts.label_column if opts.label is None else None)):
        if col and col not in names:
            raise CorpusError(path, None, None, f"no column {col!r} ({flag})", f"its columns: {', '.join(names)}")
    if not opts.text_column and not opts.messages_column and "messages" not in names and \
            not any(c in names for c in TEXT_FIELDS):
        raise CorpusError(path, None, None, f"no text column (looked for {', '.join(TEXT_FIELDS)}, messages)",
                          f"pass --text-column NAME, or --messages-column NAME for chat turns; its columns: "
                          f"{', '.join(names) or '(none)'}")


def _check_json_block(batch: pa.RecordBatch, opts: ReadOptions) -> None:
    """Raise :class:`NotExact` unless every value reads as Python's ``json.loads`` would."""
    messages_key = opts.messages_column or "messages"
    null_means_missing = {messages_key, "trait", "dataset", "split"}  # the rules read a null as absent
    for field, col in zip(batch.schema, batch.columns):
        t = field.type
        if col.null_count and field.name not in null_means_missing:
            raise NotExact  # a key missing from some lines, or a null: Arrow shows both as null
        if field.name == messages_key and pa.types.is_list(t):
            continue  # turned into dicts row by row; _check_messages keeps role and content only
        if pa.types.is_string(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
            continue
        if pa.types.is_int64(t) and field.name not in ("split",):
            continue
        if pa.types.is_float64(t) and field.name not in ("trait", "dataset", "split"):
            big = pc.max(pc.abs(col)).as_py() if len(col) else None
            if big is None or big < EXACT_DOUBLE:  # (NaN compares False: Python reads NaN alike)
                continue
        raise NotExact  # nested objects, ints widened past 2**53, timestamps: the line reader decides


def _first_text_key(names) -> str | None:
    return next((k for k in TEXT_FIELDS if k in names), None)


def _vectorised(batch: pa.RecordBatch, rows, path, name, opts) -> pa.RecordBatch:
    n, names = batch.num_rows, batch.schema.names
    messages_key = opts.messages_column or "messages"
    if opts.messages_column:
        chat = np.ones(n, bool)
    elif not opts.text_column and "messages" in names:
        chat = batch.column("messages").is_valid().to_numpy(zero_copy_only=False)
    else:
        chat = np.zeros(n, bool)
    text_key = opts.text_column or _first_text_key(names)
    slow = chat.copy()
    if not chat.all():
        if text_key is None or text_key not in names:
            raise _RowByRow  # the rules say which field is missing, row by row
        text = batch.column(text_key)
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)
                or pa.types.is_string_view(text.type)):
            raise _RowByRow
        text = text.cast(pa.string())
        blank = pc.is_in(pc.utf8_slice_codeunits(pc.fill_null(text, ""), 0, 1), WHITESPACE)
        slow |= ~text.is_valid().to_numpy(zero_copy_only=False) | blank.to_numpy(zero_copy_only=False)
    fast = np.flatnonzero(~slow)
    label_key = opts.label_column or next((k for k in LABEL_FIELDS if k in names), None)
    if label_key is not None and label_key not in names:
        if opts.label is None:
            raise _RowByRow  # --label-column names a column this file lacks: the rules say so
        label_key = None
    out = None
    if len(fast):
        take = pa.array(fast)
        texts = batch.column(text_key).cast(pa.string()).take(take)
        ids = text_ids(texts)
        fast_rows = rows[fast]
        label = (_per_value(batch.column(label_key), fast, fast_rows, path,
                            lambda v, r: parse_label(v, path, r, label_key, opts.zero_is_negative))
                 if label_key else np.full(len(fast), _default_label(path, rows[fast[0]], opts), object))
        trait = _named(batch, "trait", fast, fast_rows, opts.trait or name)
        dataset = _named(batch, "dataset", fast, fast_rows, opts.dataset or name)
        split = _splits(batch, fast, fast_rows, path, opts)
        used = {text_key, label_key, messages_key} | RESERVED
        extra_cols = [c for c in names if c not in used]
        extra = None
        if extra_cols:
            extra = pa.array([json.dumps(r, ensure_ascii=False, default=str)
                              for r in batch.select(extra_cols).take(take).to_pylist()], pa.string())
        source = pc.binary_join_element_wise(f"{path}:", pa.array(fast_rows).cast(pa.string()), "")
        out = pa.RecordBatch.from_arrays(
            [ids, pa.array(dataset, pa.string()), pa.array(trait, pa.string()), pa.array(label, pa.int8()),
             pa.array(split, pa.string()), source, texts, pa.nulls(len(fast), pa.string()),
             extra if extra is not None else pa.nulls(len(fast), pa.string())], schema=COLUMNS)
    if not slow.any():
        return out
    rest = _row_by_row(batch, rows, np.flatnonzero(slow), path, name, opts)
    if out is None:
        return rest
    both = pa.Table.from_batches([out, rest])
    order = np.argsort(np.concatenate([fast, np.flatnonzero(slow)]), kind="stable")
    return both.take(pa.array(order)).combine_chunks().to_batches()[0]


def _default_label(path, row, opts) -> int:
    return parse_label(opts.label, path, int(row), "--label", opts.zero_is_negative) if opts.label is not None else 0


def _per_value(col, idx, rows, path, fn) -> np.ndarray:
    """``fn(value, row)`` for the rows ``idx`` of ``col``, computed once per distinct value (an
    error names the first row holding the value). object array [len(idx)]."""
    sub = col.take(pa.array(idx))
    try:
        enc = pc.dictionary_encode(sub)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        raise _RowByRow from None
    codes = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
    values = enc.dictionary.to_pylist() + [None]
    mapped = np.empty(len(values), object)
    for k in np.unique(codes):
        first = int(np.argmax(codes == k))
        mapped[k] = fn(values[k], int(rows[first]))
    return mapped[codes]


def _named(batch, column, idx, rows, default) -> np.ndarray:
    """trait / dataset: the record's own value (as ``str``), else the option or file name."""
    if column not in batch.schema.names:
        return np.full(len(idx), default, object)
    return _per_value(batch.column(column), idx, rows, None,
                      lambda v, r: str(v) if v not in (None, "") else default)


def _splits(batch, idx, rows, path, opts) -> np.ndarray:
    """The record's split, else ``--split``, else None (the plan assigns it: :mod:`..splits`)."""
    default = parse_split(opts.split, path, "--split") if opts.split else None
    if "split" in batch.schema.names:
        own = _per_value(batch.column("split"), idx, rows, path,
                         lambda v, r: parse_split(v, path, r) if v not in (None, "") else None)
    else:
        own = np.full(len(idx), None, object)
    if default is not None:
        return np.where(own == None, default, own)  # noqa: E711 (elementwise)
    return own


def _row_by_row(batch, rows, idx, path, name, opts) -> pa.RecordBatch:
    """``record_from_object`` on each row ``idx`` (the rules themselves)."""
    cols = {c: [] for c in COLUMNS.names}
    for obj, row in zip(batch.take(pa.array(idx)).to_pylist(), rows[idx]):
        rec = record_from_object(obj, path, int(row), opts, name)
        r = rec.as_row()
        for c in ("prompt_id", "dataset", "trait", "label", "split", "source", "text", "messages"):
            cols[c].append(r[c])
        cols["extra"].append(r["extra"] if rec.extra else None)
    return pa.RecordBatch.from_pydict(cols, schema=COLUMNS)
