"""Compaction: merge a table's small parts into large ones, atomically for crashes and readers.

Every commit adds one Parquet part, so a 1M-prompt ingest leaves ~4,000 parts in ``rows`` and
every reader pays per part. A compaction reads the files it merges in row order, writes them
as one ``base-*`` part (streamed, one row group at a time, so memory stays bounded), then
swaps the table's manifest (:mod:`.manifest`): before the swap readers see the old files, after
it the new base. What it replaced is deleted once :func:`~.manifest.retire_grace` has passed.

Policy (tiers, as in a log-structured merge): appended parts are merged once there are
:data:`AUTO_PARTS` of them, into a tier-0 base; when that would make :data:`FANOUT` bases of
one tier at the end of the table, those are merged too, into one base of the next tier. A
table of n parts thus holds O(log n) bases, and each row is rewritten O(log n) times.
:func:`compact` with ``full=True`` (``traitlens compact``) merges everything into one base.

Runs only under the store's writer lock (appends and compactions never overlap):
``Table.compact_if_due`` (:mod:`.table`) runs after every append and does nothing without the
lock; ``Store.compact`` (``traitlens compact``) takes the lock.
A kill at any point leaves the old manifest (plus an orphan base or temporary file, which
``verify --repair`` deletes: rolled back) or the new one (plus retired files, deleted later:
finished).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import manifest as mf
from .layout import StoreError
from .location import StorePath, capabilities, write_atomically
from .tables import WRITE_OPTIONS

AUTO_PARTS = 64  # appended parts that make a table due for compaction
FANOUT = 8  # bases of one tier merged into one of the next
ROW_GROUP_ROWS = 131_072  # rows per row group of a base

Keep = Callable[[pa.RecordBatch], Any]  # a batch -> a boolean mask of the rows to keep (an Arrow array)
Plan = tuple[list[dict[str, Any]], list[StorePath], int]  # (bases kept, files to merge, tier of the result)


@dataclass
class Compacted:
    """What one table's compaction did."""

    table: str
    files_before: int
    files_after: int
    rows: int  # rows rewritten
    seconds: float
    deleted: int  # retired files removed (from this or earlier compactions)


def footer(path: StorePath) -> tuple[dict[str, Any] | None, int]:
    """A base's own record and row count (None where its footer does not read)."""
    try:
        with path.open("rb") as f:
            meta = pq.ParquetFile(f).metadata
        kv = meta.metadata or {}
        record: dict[str, Any] = json.loads(kv[mf.FOOTER_KEY]) if mf.FOOTER_KEY in kv else {}
        return record, int(meta.num_rows)
    except (pa.ArrowException, OSError, ValueError):
        return None, 0


def _batches(path: StorePath, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The rows of one file as batches of ``schema`` (a part written before a column existed
    gets nulls in it)."""
    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        for b in pf.iter_batches(batch_size=65_536):
            cols = [b.column(n).cast(schema.field(n).type) if n in b.schema.names
                    else pa.nulls(b.num_rows, schema.field(n).type) for n in schema.names]
            yield pa.record_batch(cols, schema=schema)


def _write_base(table_dir: StorePath, name: str, inputs: list[StorePath], schema: pa.Schema, footer: dict[bytes, bytes],
                keep: Keep | None = None) -> int:
    """Stream ``inputs`` in order into one new file ``name`` (atomic); returns its row count.
    ``keep(batch) -> boolean mask``: only the rows it keeps are written (:func:`rewrite_without`)."""
    schema = schema.with_metadata(footer)
    n = [0]

    def write(sink: IO[bytes]) -> None:
        with pq.ParquetWriter(sink, schema, **WRITE_OPTIONS) as w:
            buf: list[pa.RecordBatch] = []
            rows = 0
            for path in inputs:
                for b in _batches(path, schema):
                    b = b if keep is None else b.filter(keep(b))
                    buf.append(b)
                    rows += b.num_rows
                    if rows >= ROW_GROUP_ROWS:  # one row group in memory at a time
                        w.write_table(pa.Table.from_batches(buf, schema))
                        n[0], buf, rows = n[0] + rows, [], 0
            if buf:
                w.write_table(pa.Table.from_batches(buf, schema))
                n[0] += rows

    write_atomically(table_dir / name, write)
    return n[0]


def _plan(snap: mf.Snapshot, full: bool) -> Plan | None:
    """``(bases kept, files to merge, tier of the result)``, or None when nothing is due."""
    bases = list(snap.manifest.bases) if snap.manifest else []
    appended = snap.appended
    if full:
        if len(bases) + len(appended) <= 1:
            return None
        tier = max([b["tier"] for b in bases] + [0]) + (1 if len(bases) > 1 else 0)
        return [], [snap.table_dir / b["name"] for b in bases] + appended, tier
    if len(appended) < AUTO_PARTS:
        return None
    merged: list[dict[str, Any]] = []
    tier = 0
    # absorb the trailing bases that, with the new one, would make FANOUT of one tier
    while len(bases) >= FANOUT - 1 and all(b["tier"] == tier for b in bases[-(FANOUT - 1):]):
        merged = bases[-(FANOUT - 1):] + merged
        bases = bases[:-(FANOUT - 1)]
        tier += 1
    return bases, [snap.table_dir / b["name"] for b in merged] + appended, tier


def _plan_all(snap: mf.Snapshot) -> Plan | None:
    """Every live file into one base (a filtered rewrite), or None for a table without files."""
    bases = list(snap.manifest.bases) if snap.manifest else []
    if not bases and not snap.appended:
        return None
    return [], [snap.table_dir / b["name"] for b in bases] + snap.appended, max([b["tier"] for b in bases] + [0])


def rewrite_without(table_dir: StorePath, table: str, schema: pa.Schema, drop: Keep) -> int:
    """Rewrite a table without the rows ``drop(batch) -> boolean mask`` selects; returns how
    many rows it has left. Atomic like a compaction (one new base, then the manifest switch: a
    kill before the switch leaves the table as it was); the replaced files go after the grace.
    For ``verify --repair`` only, under the writer lock: committed rows are never dropped
    otherwise (the caller keeps what it drops, in the quarantine)."""
    import pyarrow.compute as pc

    done = compact_table(table_dir, table, schema, full=True, keep=lambda b: pc.invert(pc.fill_null(drop(b), False)))
    return done.rows if done is not None else 0


def sweep_temporaries(table_dir: StorePath, older_than: float) -> int:
    """Delete the table's temporary files (``.tmp-*``: a part or a base whose writer was killed
    before its rename) last written more than ``older_than`` seconds ago; returns how many.
    Under the writer lock every writer of this store is dead or waiting, but a program that
    appends through the Python API without the lock could be writing one right now: the age
    spares it. Object stores write whole objects, never temporaries."""
    if not capabilities(table_dir).atomic_rename:  # whole PUTs: nothing is written beside
        return 0
    now, gone = time.time(), 0
    for p in table_dir.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime >= older_than:
                p.unlink()
                gone += 1
        except FileNotFoundError:
            pass
    return gone


def drop_bases(table_dir: StorePath, old: mf.Manifest | None, names: list[str]) -> None:
    """Write the next manifest generation without the bases ``names`` (lost or quarantined)."""
    if old is None or not any(b["name"] in names for b in old.bases):
        return
    mf.write_manifest(table_dir, mf.Manifest(old.table, old.generation + 1,
                                             [b for b in old.bases if b["name"] not in names], old.retired))


def delete_retired(table_dir: StorePath, snap: mf.Snapshot | None = None, grace: float | None = None) -> int:
    """Delete retired files older than the grace (under the writer lock); returns how many."""
    snap = snap or mf.snapshot(table_dir)
    gone = 0
    for p in snap.retired_present(mf.retire_grace() if grace is None else grace):
        try:
            p.unlink()
            gone += 1
        except FileNotFoundError:
            pass
    return gone


def compact_table(table_dir: StorePath, table: str, schema: pa.Schema, full: bool = False,
                  grace: float | None = None, keep: Keep | None = None) -> Compacted | None:
    """Compact one table if it is due (``full``: merge everything); None when nothing was due.
    ``keep``: rewrite every live file, keeping only the rows it selects (:func:`rewrite_without`).
    Call under the store's writer lock."""
    t0 = time.perf_counter()
    snap = mf.snapshot(table_dir)
    if snap.orphans:  # an interrupted compaction's output: we hold the lock, so none is live
        for p in snap.orphans:
            p.unlink(missing_ok=True)
        snap = mf.snapshot(table_dir)
    sweep_temporaries(table_dir, mf.retire_grace() if grace is None else grace)
    plan = _plan(snap, full) if keep is None else _plan_all(snap)
    if plan is None:
        gone = delete_retired(table_dir, snap, grace)
        return Compacted(table, len(snap.live), len(snap.live), 0, time.perf_counter() - t0, gone) if gone else None
    kept, inputs, tier = plan
    old = snap.manifest
    if old is None:
        # A table's first compaction writes an empty manifest before its base: a kill between
        # the base and the switch then leaves an orphan (rolled back), not a base without a
        # manifest, which only a lost manifest may look like. Readers racing it see gen 0.
        _require_format_2(table_dir.parent.parent)  # releases that ignore manifests must refuse it now
        old = mf.Manifest(table)
        mf.write_manifest(table_dir, old)
    gen = old.generation + 1
    name = f"base-{gen:06d}-{uuid.uuid4().hex[:8]}.parquet"
    replaces = [p.name for p in inputs]
    digests = {b["name"]: int(b["digest"], 16) for b in old.bases}
    # a filtered rewrite holds other rows than the files it replaces: its own name joins the digest
    own = [mf.name_digest(name)] if keep is not None else []
    digest = f"{mf.combine([digests.get(n, mf.name_digest(n)) for n in replaces] + own):032x}"
    try:
        rows = _write_base(table_dir, name, inputs, schema, mf.footer_record(gen, tier, replaces, digest), keep)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # disk full, permissions: the caller says which
        raise StoreError(f"{table_dir}: cannot compact, a part does not read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); run `traitlens verify --repair` first") from None
    listed = set(snap.listed)
    now = time.time()
    retired: list[dict[str, Any]] = [r for r in old.retired if r["name"] in listed] + [{"name": n, "generation": gen, "at": now}
                                                                 for n in replaces]
    new = mf.Manifest(table, gen, kept + [{"name": name, "rows": rows, "tier": tier, "generation": gen,
                                           "digest": digest}], retired)
    mf.write_manifest(table_dir, new)  # the switch: from here readers see the new base
    gone = delete_retired(table_dir, mf.Snapshot(table_dir, new, sorted(listed | {name})), grace)
    return Compacted(table, len(snap.live), len(kept) + 1, rows, time.perf_counter() - t0, gone)


def _require_format_2(root: StorePath) -> None:
    """Raise the store's format version to 2 (atomically) before its first manifest: a release
    that reads version 1 would ignore the manifest and read retired parts, so it must refuse."""
    path = root / "store.json"
    meta = json.loads(path.read_text())
    if meta.get("version", 1) >= 2:
        return
    data = json.dumps({**meta, "version": 2}, indent=2).encode()
    write_atomically(path, lambda f: f.write(data))
