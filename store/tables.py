"""Append-only Parquet tables: each commit adds one part file, written atomically.

On a local disk a part is written to a hidden temporary name in the table's folder, flushed
and fsynced, then renamed to ``part-<time_ns>-<rand>.parquet``. Readers list only
``part-*.parquet``, so a crash leaves either the whole part or none of it (plus a ``.tmp-*``
file that ``verify --repair`` removes). On object storage (an fsspec URL) the part is uploaded
in one PUT under its final name: an object is visible only once complete, so the same holds
without a rename. Schemas are fixed per table so every part unifies.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .location import arrow_files, is_remote, write_bytes_whole

TS = pa.timestamp("us", tz="UTC")

PROMPTS_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("text", pa.string()),
        ("messages", pa.string()),  # JSON list of {role, content}, or null for plain text
        ("dataset", pa.string()),
        ("trait", pa.string()),
        ("label", pa.int8()),  # +1 trait present, -1 its opposite, 0 unlabelled
        ("split", pa.string()),  # train | val | test
        ("source", pa.string()),  # file:line it came from
        ("extra", pa.string()),  # JSON object of the record's other fields
        ("added_at", TS),
    ]
)

ROWS_SCHEMA = pa.schema(
    [
        ("model_key", pa.string()),
        ("fmt", pa.string()),
        ("site", pa.string()),
        ("pooling", pa.string()),
        ("row", pa.int64()),  # ordinal of the prompt in its group = array row for pooled groups
        ("prompt_id", pa.string()),
        ("token_start", pa.int64()),  # first array row of this prompt (tokens pooling), else null
        ("token_count", pa.int32()),  # tokens the model saw for this prompt (after truncation)
        ("truncated", pa.int32()),  # tokens cut to fit the context
        ("response", pa.string()),  # generated text (response_mean), else null
        ("run_id", pa.string()),
        ("committed_at", TS),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("status", pa.string()),  # running | done | failed | interrupted
        ("started_at", TS),
        ("ended_at", TS),
        ("code_version", pa.string()),
        ("config", pa.string()),  # JSON
        ("counts", pa.string()),  # JSON
        ("message", pa.string()),
    ]
)

VECTORS_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),  # hash of everything below up to code_version: same inputs, same id
        ("model_key", pa.string()),
        ("fmt", pa.string()),
        ("site", pa.string()),
        ("pooling", pa.string()),
        ("layer", pa.int32()),
        ("trait", pa.string()),
        ("method", pa.string()),
        ("params", pa.string()),  # JSON
        ("fingerprint", pa.string()),  # hash of the contrastive rows (prompt_id, label, split) used
        ("where_sql", pa.string()),  # the SQL filter that chose the rows, if any
        ("n_pos", pa.int32()),
        ("n_neg", pa.int32()),
        ("held_split", pa.string()),
        ("n_held_pos", pa.int32()),
        ("n_held_neg", pa.int32()),
        ("code_version", pa.string()),
        ("out_of_core", pa.bool_()),
        ("d", pa.int32()),
        ("raw_norm", pa.float64()),
        ("vector", pa.list_(pa.float32())),  # unit norm, positives project higher
        ("auroc", pa.float64()),
        ("balanced_accuracy", pa.float64()),
        ("threshold", pa.float64()),
        ("cohens_d", pa.float64()),
        ("separation", pa.float64()),
        ("polarity", pa.int8()),
        ("p_value", pa.float64()),
        ("train_auroc", pa.float64()),
        ("stability", pa.float64()),
        ("agreement", pa.float64()),  # mean cosine to the other non-random methods at the same layer
        ("cosines", pa.string()),  # JSON {other method: cosine} at the same layer
        ("info", pa.string()),  # JSON method extras (bias, train accuracy, chosen component, ...)
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

STEERING_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),
        ("trait", pa.string()),
        ("method", pa.string()),
        ("layer", pa.int32()),
        ("alpha", pa.float64()),  # in units of the layer's mean token norm (scale)
        ("kind", pa.string()),  # persona: Yes-No log-odds; refusal: P(refusal opening); refusal_first_token
        ("n", pa.int32()),
        ("scale", pa.float64()),
        ("unsteered", pa.float64()),
        ("plus", pa.float64()),
        ("minus", pa.float64()),
        ("shift", pa.float64()),  # plus - minus (persona) or plus - unsteered (refusal)
        ("detail", pa.string()),
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

TRAJECTORIES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("prompt_id", pa.string()),
        ("model_key", pa.string()),
        ("vector_id", pa.string()),
        ("layer", pa.int32()),
        ("position", pa.int32()),
        ("token", pa.string()),
        ("generated", pa.bool_()),
        ("projection", pa.float64()),
        ("velocity", pa.float64()),
        ("acceleration", pa.float64()),
        ("commitment", pa.int32()),  # the trajectory's commitment token index (null: never)
        ("created_at", TS),
    ]
)

SCHEMAS = {"prompts": PROMPTS_SCHEMA, "rows": ROWS_SCHEMA, "runs": RUNS_SCHEMA, "vectors": VECTORS_SCHEMA,
           "steering": STEERING_SCHEMA, "trajectories": TRAJECTORIES_SCHEMA}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_files(table_dir: Path) -> list[Path]:
    """Committed parts of one table, oldest first."""
    if not table_dir.exists():
        return []
    return sorted(table_dir.glob("part-*.parquet"))


def write_part(table_dir: Path, table: pa.Table, schema: pa.Schema) -> Path:
    """Atomically add ``table`` (cast to ``schema``) as a new part of ``table_dir``."""
    table = table.select(schema.names).cast(schema)
    token = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    if is_remote(table_dir):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        final = table_dir / f"part-{token}.parquet"
        write_bytes_whole(final, buf.getvalue())
        return final
    table_dir.mkdir(parents=True, exist_ok=True)
    tmp = table_dir / f".tmp-{token}.parquet"
    final = table_dir / f"part-{token}.parquet"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(table_dir)
    return final


def read_table(table_dir: Path, schema: pa.Schema, columns: list[str] | None = None, filter=None) -> pa.Table:
    """Read every committed part of a table as one Arrow table (empty with ``schema`` if none)."""
    parts = part_files(table_dir)
    if not parts:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    fs, files = arrow_files(parts)
    dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=fs)
    return dataset.to_table(columns=columns, filter=filter)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from dicts; missing fields become nulls."""
    return pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
