"""Append-only Parquet tables: each commit adds one part file, written atomically;
compaction (:mod:`.compaction`, its file set in :mod:`.manifest`) merges them later. The rest
of the code reaches a table through its facade, ``store.tables[name]`` (:mod:`.table`).

Where the location renames atomically (a local disk; :mod:`.location`) a part is written to a
hidden temporary name in the table's folder, flushed and fsynced, then renamed to
``part-<time_ns>-<rand>.parquet``. Readers read only the live files (:func:`part_files`), so
a crash leaves either the whole part or none of it (plus a ``.tmp-*`` file that ``verify
--repair`` removes). Where it cannot (object storage) the part is uploaded in one PUT under
its final name: an object is visible only once complete, so the same holds without a rename.
Schemas are fixed per table so every part unifies.

Every page carries a CRC (``write_page_checksum``) so that ``verify`` sees a flipped byte, not
only a truncated file. A part that cannot be read is never skipped in silence: readers raise
:class:`~traitlens.store.layout.StoreError` naming the file, and ``verify --repair`` moves it
to the store's quarantine.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from . import manifest
from .layout import StoreError
from .location import StorePath, arrow_files, make_folder, write_atomically

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
        ("status", pa.string()),  # running | done | failed | interrupted | killed (its process died unrecorded)
        ("started_at", TS),
        ("ended_at", TS),  # killed: when the next command noticed
        ("code_version", pa.string()),
        ("config", pa.string()),  # JSON
        ("counts", pa.string()),  # JSON
        ("message", pa.string()),
        ("pid", pa.int64()),  # the process that recorded it (null: recorded by an older release)
        ("host", pa.string()),  # its host name and pid namespace (store/runs.py: this_host)
        ("held_lock", pa.bool_()),  # it held the writer lock from start to end (a killed one is over once we hold it)
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
        ("floor_length", pa.float64()),  # held-out AUROC of token count alone (pipeline/extract/floors.py)
        ("floor_dataset", pa.float64()),  # held-out AUROC of the source dataset alone (several datasets only)
        ("spec_auroc", pa.float64()),  # extract --background, else null: held-out positives against background
        ("spec_precision", pa.float64()),  # share of held-out positives in the pool's top decile (extract/specificity.py)
        ("spec_base", pa.float64()),  # their share of the whole pool (a random order's precision)
        ("spec_floor_length", pa.float64()),  # spec_auroc of token count alone
        ("n_background", pa.int32()),  # held-out background prompts in the pool
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
        ("ci_low", pa.float64()),  # bootstrap 95% interval of the mean shift over the samples
        ("ci_high", pa.float64()),
        ("wrong_way", pa.float64()),  # share of samples whose shift has the wrong sign
        ("wrong_way_low", pa.float64()),  # its Wilson 95% interval
        ("wrong_way_high", pa.float64()),
        ("steerability", pa.float64()),  # mean per-sample slope of the measure against alpha
        ("kl", pa.float64()),  # damage: mean KL(unsteered || +alpha) of next tokens on neutral prompts, nats
        ("kl_low", pa.float64()),
        ("kl_high", pa.float64()),
        ("perplexity", pa.float64()),  # median perplexity of the steered replies to neutral prompts (unsteered model)
        ("perplexity_unsteered", pa.float64()),  # the same of the unsteered replies
        ("distinct2", pa.float64()),  # mean share of distinct token bigrams in the steered replies (1: no repeats)
        ("distinct2_unsteered", pa.float64()),
        ("judge", pa.float64()),  # mean judge score 0-100 of the steered replies (null: no --judge)
        ("judge_low", pa.float64()),
        ("judge_high", pa.float64()),
        ("judge_unsteered", pa.float64()),
        ("judge_rejected", pa.float64()),  # share of the judge's answers rejected as holding no 0-100 score
        ("detail", pa.string()),
        ("run_id", pa.string()),
        ("created_at", TS),
        ("operation", pa.string()),  # add (a push; null in rows stored before ablations were) | ablate (alpha null)
        ("kl_measure", pa.string()),  # all-positions (null: stored before --kl) | first-token
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

SCORES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("vector_id", pa.string()),
        ("trait", pa.string()),
        ("layer", pa.int32()),
        ("score", pa.float64()),  # projection of the prompt's stored activation onto the unit vector
        ("calibrated", pa.float64()),  # 0 = the held-out negatives' mean score, 1 = the positives'
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

STEERING_SAMPLES_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),
        ("trait", pa.string()),
        ("method", pa.string()),
        ("layer", pa.int32()),
        ("alpha", pa.float64()),
        ("kind", pa.string()),
        # effect (the kind's measure on a held-out text) | kl | perplexity | distinct2 | judge (on a neutral prompt)
        ("measure", pa.string()),
        ("sample", pa.string()),  # the text measured
        ("unsteered", pa.float64()),
        ("plus", pa.float64()),
        ("minus", pa.float64()),
        ("shift", pa.float64()),  # effect: plus - minus (or - unsteered); kl: the KL itself; else plus - unsteered
        ("reply", pa.string()),  # perplexity / distinct2 / judge: the steered reply read
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

REPLIES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),  # a chat record whose last turn is a given assistant reply
        ("reply_prompt_id", pa.string()),  # the same chat with that turn replaced by the model's own (null: it said nothing)
        ("model_key", pa.string()),
        ("generate", pa.int32()),  # the most tokens the model's reply could have
        ("reply", pa.string()),  # the model's reply, as text
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

LENS_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),
        ("model_key", pa.string()),  # the model whose final norm and unembedding read the vector
        ("direction", pa.string()),  # promotes | suppresses
        ("rank", pa.int32()),  # 0: the strongest
        ("token_id", pa.int64()),
        ("token", pa.string()),
        ("logit", pa.float64()),
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

CONDITIONS_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),  # the condition vector
        ("trait", pa.string()),
        ("layer", pa.int32()),
        ("pooling", pa.string()),  # how a prompt's state is pooled before it is projected
        ("threshold", pa.float64()),  # a prompt passes when its projection is above this
        ("f1", pa.float64()),  # of the threshold on the held-out split
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("split", pa.string()),
        ("n_pos", pa.int32()),
        ("n_neg", pa.int32()),
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

STEERING_TOGETHER_SCHEMA = pa.schema(
    [
        ("combination_id", pa.string()),  # one set of pushes measured together (`evaluate --add ... --add ...`)
        ("trait", pa.string()),  # whose measure was read
        ("kind", pa.string()),
        ("part", pa.string()),  # together | alone (one push of the set) | random (random directions, same pushes)
        ("pushes", pa.string()),  # JSON list: vector_id, trait, method, layer, alpha, scale, site, positions
        ("n", pa.int32()),
        ("unsteered", pa.float64()),
        ("plus", pa.float64()),
        ("minus", pa.float64()),
        ("shift", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("wrong_way", pa.float64()),
        ("kl", pa.float64()),
        ("kl_low", pa.float64()),
        ("kl_high", pa.float64()),
        ("perplexity", pa.float64()),
        ("perplexity_unsteered", pa.float64()),
        ("distinct2", pa.float64()),
        ("distinct2_unsteered", pa.float64()),
        ("judge", pa.float64()),
        ("judge_unsteered", pa.float64()),
        ("run_id", pa.string()),
        ("created_at", TS),
        ("kl_measure", pa.string()),  # all-positions (null: stored before --kl) | first-token
    ]
)

CAPABILITY_SCHEMA = pa.schema(
    [
        ("vector_id", pa.string()),  # the vector pushed or ablated (null: the unsteered model, alpha 0)
        ("trait", pa.string()),
        ("method", pa.string()),
        ("layer", pa.int32()),
        ("alpha", pa.float64()),  # 0: unsteered; null: an ablation
        ("operation", pa.string()),  # add | ablate (null: unsteered)
        ("task", pa.string()),  # an lm-evaluation-harness task
        ("metric", pa.string()),  # as lm-eval names it, with its filter: acc,none
        ("value", pa.float64()),  # what lm-eval returned for the task and metric
        ("stderr", pa.float64()),  # lm-eval's standard error of it (null where it gives none)
        ("n", pa.int32()),  # documents scored
        ("higher_is_better", pa.bool_()),
        ("unsteered", pa.float64()),  # the same metric at alpha 0 (the same documents)
        ("change", pa.float64()),  # value - unsteered
        ("change_low", pa.float64()),  # its 95% interval: paired bootstrap over the documents, else from the stderrs
        ("change_high", pa.float64()),
        ("interval", pa.string()),  # paired bootstrap | normal from both stderrs | none
        ("detail", pa.string()),  # JSON: lm-eval version, limit, include paths, the push
        ("run_id", pa.string()),
        ("created_at", TS),
    ]
)

SCHEMAS = {"prompts": PROMPTS_SCHEMA, "rows": ROWS_SCHEMA, "runs": RUNS_SCHEMA, "vectors": VECTORS_SCHEMA,
           "steering": STEERING_SCHEMA, "trajectories": TRAJECTORIES_SCHEMA, "scores": SCORES_SCHEMA,
           "replies": REPLIES_SCHEMA, "steering_samples": STEERING_SAMPLES_SCHEMA,
           "lens": LENS_SCHEMA, "conditions": CONDITIONS_SCHEMA,
           "steering_together": STEERING_TOGETHER_SCHEMA, "capability": CAPABILITY_SCHEMA}


def part_files(table_dir: StorePath) -> list[StorePath]:
    """The live files of one table in row order: its compacted bases, then the parts appended
    since (see :mod:`.manifest`)."""
    return manifest.snapshot(table_dir).live


WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}


def write_part(table_dir: StorePath, table: pa.Table, schema: pa.Schema) -> StorePath:
    """Atomically add ``table`` (cast to ``schema``) as a new part of ``table_dir``."""
    table = table.select(schema.names).cast(schema)
    make_folder(table_dir)
    final = table_dir / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    write_atomically(final, lambda f: pq.write_table(table, f, **WRITE_OPTIONS))
    return final


def part_problem(path: StorePath, schema: pa.Schema, full: bool = True) -> str | None:
    """Why a part cannot be trusted, or None. ``full=False`` reads only the footer (cheap);
    ``full=True`` decodes every page and checks its CRC and the schema."""
    try:
        with path.open("rb") as f:
            if not full:
                meta = pq.ParquetFile(f).metadata
                got = meta.schema.to_arrow_schema()
            else:
                got = pq.read_table(f, page_checksum_verification=True).schema
    except (pa.ArrowException, OSError, ValueError) as e:  # truncated, garbage, bad CRC
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    missing = [n for n in schema.names if n not in got.names]
    # a part written before a column existed lacks it (reads as NULL); a part missing the key columns is foreign
    if missing and any(n in missing for n in schema.names[:2]):
        return f"not a part of this table: no column(s) {missing[:3]}"
    return None


def damaged_parts(table_dir: StorePath, schema: pa.Schema, full: bool = False) -> list[tuple[StorePath, str]]:
    """``(part, problem)`` for every part of a table that cannot be read."""
    return [(p, why) for p in part_files(table_dir) if (why := part_problem(p, schema, full)) is not None]


def damaged_error(table_dir: StorePath, schema: pa.Schema, cause: BaseException) -> StoreError:
    """The one-line error for a read that failed: names the damaged part(s) and the fix."""
    bad = damaged_parts(table_dir, schema, full=True)
    if not bad:
        return StoreError(f"{table_dir}: cannot read the table ({type(cause).__name__}: {cause}); "
                          "run `traitlens verify`")
    (first, why), more = bad[0], len(bad) - 1
    also = f" (and {more} more part{'s' if more > 1 else ''})" if more else ""
    return StoreError(f"{first}: damaged Parquet part ({why}){also}; run `traitlens verify --repair` to move it "
                      "to the store's quarantine/ folder, then re-ingest what it held")


def read_table(table_dir: StorePath, schema: pa.Schema, columns: list[str] | None = None,
               filter: pc.Expression | None = None) -> pa.Table:
    """Read every committed part of a table as one Arrow table (empty with ``schema`` if none).

    A damaged part raises :class:`StoreError` naming it (never an Arrow traceback). A part that
    vanished between the listing and the read (a compaction deleted what it had retired long
    enough ago) means a newer snapshot exists: the read starts again from it."""
    for attempt in range(3):
        try:
            return read_parts(part_files(table_dir), schema, columns, filter)
        except FileNotFoundError:
            if attempt == 2:
                raise
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:  # disk or permission error, not damage
                raise
            raise damaged_error(table_dir, schema, e) from None


def read_parts(parts: list[StorePath], schema: pa.Schema, columns: list[str] | None = None,
               filter: pc.Expression | None = None) -> pa.Table:
    """These parts as one Arrow table (empty with ``schema`` if none); Arrow errors propagate."""
    if not parts:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return parts_dataset(parts, schema).to_table(columns=columns, filter=filter)


def parts_dataset(parts: list[StorePath], schema: pa.Schema) -> ds.Dataset:
    """These parts as one lazily scanned ``pyarrow.dataset`` (local or object storage); a table
    with no part is an in-memory empty one. DuckDB scans it without loading it whole."""
    if not parts:
        return ds.dataset(schema.empty_table())
    fs, files = arrow_files(parts)
    return ds.dataset(files, schema=schema, format="parquet", filesystem=fs)


def latest_prompts(t: pa.Table) -> pa.Table:
    """Keep the newest record of each (prompt_id, dataset, trait): labels and splits are data,
    and a re-ingest with a corrected label appends a newer record that supersedes the old one.
    Ties in ``added_at`` go to the later record. Row order of the survivors is kept."""
    if t.num_rows == 0 or "added_at" not in t.column_names:
        return t
    if t.group_by(["prompt_id", "dataset", "trait"]).aggregate([]).num_rows == t.num_rows:
        return t  # no key recorded twice: the common case, decided in Arrow without a Python loop
    stamps = pc.fill_null(t["added_at"].cast(pa.int64()), 0).to_numpy()
    order = np.lexsort((np.arange(t.num_rows), stamps))[::-1]  # newest first
    seen: set[tuple[str, str, str]] = set()
    keep: list[int] = []
    ids, dsets, traits = (t[c].to_pylist() for c in ("prompt_id", "dataset", "trait"))
    for i in order:
        key = (ids[i], dsets[i], traits[i])
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return t if len(keep) == t.num_rows else t.take(np.sort(np.asarray(keep, dtype=np.int64)))


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from dicts; missing fields become nulls."""
    return pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
