"""Parquet files (a row group at a time) and Arrow IPC files and streams (a record batch at a time).

The shards of a ``datasets`` ``save_to_disk`` folder are Arrow IPC streams: pyarrow reads them
without the ``datasets`` package. Columns that ``datasets`` declares ``ClassLabel`` (in the
schema's ``huggingface`` metadata, which its Parquet exports carry too) are read as their class
names, so a ``["neg", "pos"]`` label reads as -1/+1, not as the indices 0/1; dictionary columns
(pandas categoricals) as their values. A file that cannot be read (a damaged footer, a truncated
stream, strings that are not UTF-8) is a :class:`~traitlens.pipeline.capture.corpus.CorpusError`
naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traitlens.pipeline.capture.corpus import CorpusError, ReadOptions

from .normalise import check_columns, normalise

BATCH_ROWS = 65_536
ARROW_FILE_MAGIC = b"ARROW1"


def parquet_batches(path: Path, name: str, opts: ReadOptions, split: str | None = None):
    """Normalised batches of a Parquet file, row group by row group."""
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise unreadable(path, "Parquet", e) from None
    with f:
        schema = f.schema_arrow
        check_columns(schema, path, opts)
        labels = class_labels(schema)
        done = 0
        for g in range(f.num_row_groups):
            try:
                batches = list(f.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]))
            except (pa.ArrowException, OSError) as e:
                if isinstance(e, OSError) and e.errno is not None:
                    raise
                raise unreadable(path, "Parquet", e, f"row group {g}") from None
            for b in batches:
                yield normalise(plain(b, labels, path), np.arange(done + 1, done + b.num_rows + 1), path, name,
                                opts, split)
                done += b.num_rows


def arrow_batches(path: Path, name: str, opts: ReadOptions, split: str | None = None):
    """Normalised batches of an Arrow IPC file (``.arrow``/``.feather`` with a footer) or stream
    (a ``datasets`` shard), memory-mapped."""
    try:
        source = pa.memory_map(str(path))
        is_file = source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
        source.seek(0)
        reader = pa.ipc.open_file(source) if is_file else pa.ipc.open_stream(source)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise unreadable(path, "Arrow IPC", e) from None
    schema = reader.schema
    check_columns(schema, path, opts)
    labels = class_labels(schema)
    done = 0
    batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) if is_file else reader
    while True:
        try:
            b = next(batches)
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise unreadable(path, "Arrow IPC", e, f"after row {done}") from None
        for part in (b.slice(i, BATCH_ROWS) for i in range(0, b.num_rows, BATCH_ROWS)):
            yield normalise(plain(part, labels, path), np.arange(done + 1, done + part.num_rows + 1), path, name,
                            opts, split)
            done += part.num_rows


def unreadable(path: Path, what: str, cause: BaseException, where: str = "") -> CorpusError:
    first = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
    return CorpusError(path, None, None, f"not a readable {what} file{' (' + where + ')' if where else ''}: {first}",
                       "it is damaged or truncated: write or copy it again")


def class_labels(schema: pa.Schema) -> dict[str, list[str]]:
    """``{column: names}`` of the top-level ``ClassLabel`` features ``datasets`` recorded."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        info = json.loads(meta)
        features = info.get("info", info).get("features", {})
    except (ValueError, AttributeError):
        return {}
    if not isinstance(features, dict):
        return {}
    return {k: v["names"] for k, v in features.items()
            if isinstance(v, dict) and v.get("_type") == "ClassLabel" and isinstance(v.get("names"), list)
            and k in schema.names}


def plain(batch: pa.RecordBatch, labels: dict[str, list[str]], path: Path) -> pa.RecordBatch:
    """Class labels as their names, dictionary columns as their values, strings checked UTF-8."""
    cols, fields = list(batch.columns), list(batch.schema)
    for i, f in enumerate(fields):
        col = cols[i]
        if pa.types.is_dictionary(f.type):
            col = col.cast(f.type.value_type)
        if f.name in labels and pa.types.is_integer(col.type):
            names = pa.array([str(n) for n in labels[f.name]], pa.string())
            codes = col.to_numpy(zero_copy_only=False)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            codes = np.where(valid & (codes >= 0) & (codes < len(names)), codes, -1)
            col = names.take(pa.array(np.where(codes >= 0, codes, 0))).to_numpy(zero_copy_only=False)
            col = pa.array(np.where(codes >= 0, col, None), pa.string())  # -1: ``datasets``' missing label
        cols[i], fields[i] = col, pa.field(f.name, col.type)
    out = pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))
    try:
        out.validate(full=True)
    except pa.ArrowInvalid as e:
        raise CorpusError(path, None, None, f"holds invalid data ({str(e).splitlines()[0][:200]})",
                          "write the file again with valid UTF-8 strings") from None
    return out
