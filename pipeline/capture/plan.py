"""Plan the ingest of a corpus of any length: one validating pass, joins in DuckDB, then windows.

1. :func:`scan_corpus` reads every record once and validates it (a bad one raises
   :class:`CorpusError` naming file:line, before anything is written; so does the same
   (prompt_id, dataset, trait) with two labels, naming both places). It keeps each record as one
   row of a private temporary Parquet file (keys, label, split, source, text, messages, extra),
   never more than one row group of them in memory.
2. :meth:`CorpusScan.decide` answers, in DuckDB under a memory limit (:func:`memory_limit`; past
   it DuckDB spills to its private temporary folder), what the rest of the run needs, as one
   byte per record:

   - ``KEEP``: the first record of its (prompt_id, dataset, trait); the others are duplicates;
   - ``NEW`` / ``RELABELLED``: a kept record whose key the store lacks, or holds with another
     label or split (its newest record, as everywhere; a record without a split keeps the stored one);
   - ``CAPTURE``: the first kept record of its prompt, when the prompt is not committed in every
     group this run writes;

   and, as one more byte, the split of each kept record the corpus gave none (:mod:`.splits`:
   stratified by label, a stored prompt keeps its own): DuckDB counts and ranks each stratum,
   :func:`.splits.cuts` says where to cut it.
3. :meth:`CorpusScan.windows` reads the scan back and yields the kept records ``window`` at a
   time with their flags (the corpus is parsed once).

So an ingest holds one window of records in Python, whatever the corpus's length: a 10M-line
corpus costs a flag byte per line in memory, and the rest on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traitlens.store.layout import GroupKey

from traitlens.store.vocabulary import MIN_PER_SPLIT, SPLIT_NAMES

from traitlens.pipeline.capture.corpus import CorpusError, PromptRecord, ReadOptions, iter_records
from traitlens.pipeline.capture.splits import PLAIN_CUTS, cuts, hash_point

KEEP, NEW, RELABELLED, CAPTURE = 1, 2, 4, 8
SCAN_SCHEMA = pa.schema([("ordinal", pa.int64()), ("prompt_id", pa.string()), ("dataset", pa.string()),
                         ("trait", pa.string()), ("label", pa.int8()), ("split", pa.string()),
                         ("source", pa.string()), ("text", pa.string()), ("messages", pa.string()),
                         ("extra", pa.string()), ("point", pa.float64())])  # messages and extra as JSON;
# point: the prompt's hash point (splits.hash_point)
ROW_GROUP = 65_536
MEMORY_LIMIT = "2GB"  # DuckDB's share while deciding; past it, it spills to disk


def memory_limit() -> str:
    """DuckDB's memory limit for the plan (``TRAITLENS_PLAN_MEMORY`` overrides :data:`MEMORY_LIMIT`)."""
    return os.environ.get("TRAITLENS_PLAN_MEMORY", MEMORY_LIMIT)


def _records(paths, opts):  # every record of every path, in order
    for p in paths:
        yield from iter_records(p, opts)


@dataclass
class CorpusScan:
    """A validated corpus: its records' keys on disk, their flags once decided."""

    paths: list
    opts: ReadOptions
    folder: Path  # private temporary folder holding scan.parquet (and DuckDB's spill files)
    n_read: int = 0
    n_distinct: int = 0  # distinct prompts among the kept records (set by decide)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # uint8 [n_read]
    # uint8 [n_read]: 1 + the index in SPLIT_NAMES of the split assigned to a kept record the
    # corpus gave none; 0 where the corpus gave one (set by decide)
    assigned: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @property
    def n_records(self) -> int:
        """Records kept (one per (prompt_id, dataset, trait))."""
        return int(np.count_nonzero(self.flags & KEEP))

    @property
    def n_duplicates(self) -> int:
        return self.n_read - self.n_records

    def count(self, flag: int) -> int:
        return int(np.count_nonzero(self.flags & flag))

    def decide(self, store=None, groups: list[GroupKey] = ()) -> "CorpusScan":
        """Set every record's flags against ``store`` (None: a store that does not exist yet)."""
        con = self._connect()
        try:
            self.n_distinct = con.execute("SELECT count(DISTINCT prompt_id) FROM kept").fetchall()[0][0]
            flags = np.zeros(self.n_read, np.uint8)
            self._mark(con, "SELECT ordinal FROM kept", flags, KEEP)
            if store is not None:
                con.register("store_prompts", store.tables["prompts"].dataset())
                con.execute("CREATE TEMP TABLE stored AS SELECT prompt_id, dataset, trait, label, split "
                            "FROM store_prompts QUALIFY row_number() OVER (PARTITION BY prompt_id, dataset, trait "
                            "ORDER BY added_at DESC NULLS LAST) = 1")
                self._mark(con, "SELECT k.ordinal FROM kept k ANTI JOIN stored s USING (prompt_id, dataset, trait)",
                           flags, NEW)
                self._mark(con, "SELECT k.ordinal FROM kept k JOIN stored s USING (prompt_id, dataset, trait) "
                           "WHERE k.label <> s.label OR k.split <> s.split", flags, RELABELLED)  # (NULL: kept)
            else:
                con.execute("CREATE TEMP TABLE stored (prompt_id VARCHAR, dataset VARCHAR, trait VARCHAR, "
                            "label TINYINT, split VARCHAR)")
                flags[(flags & KEEP) > 0] |= NEW
            self.assigned = self._assign_splits(con)
            done = "SELECT NULL::VARCHAR AS prompt_id WHERE false"
            if store is not None and groups:
                con.register("store_rows", store.tables["rows"].dataset())
                keys = pa.table({c: [getattr(g, c) for g in groups] for c in ("model_key", "fmt", "site", "pooling")})
                con.register("run_groups", keys)
                done = (f"SELECT prompt_id FROM store_rows JOIN run_groups USING (model_key, fmt, site, pooling) "
                        f"GROUP BY prompt_id HAVING count(DISTINCT (model_key, fmt, site, pooling)) = {len(groups)}")
            self._mark(con, f"SELECT min(k.ordinal) FROM kept k ANTI JOIN ({done}) d USING (prompt_id) "
                       "GROUP BY k.prompt_id", flags, CAPTURE)
            self.flags = flags
        finally:
            con.close()
        return self

    def _assign_splits(self, con) -> np.ndarray:
        """The split of every kept record the corpus gave none (:mod:`.splits`), as codes per
        ordinal (see :attr:`assigned`). Needs the ``stored`` table."""
        # each kept record's split: the corpus's, else the stored one; NULL: to assign
        con.execute("CREATE OR REPLACE TEMP TABLE fate AS SELECT k.ordinal, k.prompt_id, k.dataset, k.trait, k.label, "
                    "k.point, coalesce(k.split, s.split) AS split, k.split IS NULL AS assigned "
                    "FROM kept k LEFT JOIN stored s USING (prompt_id, dataset, trait)")
        # what each stratum holds already: its placed records, and the stored prompts this corpus lacks
        held = con.execute(
            "SELECT trait, dataset, label, split, count(*) FROM (SELECT trait, dataset, label, split FROM fate "
            "WHERE split IS NOT NULL UNION ALL SELECT s.trait, s.dataset, s.label, s.split FROM stored s "
            "ANTI JOIN kept k USING (prompt_id, dataset, trait) WHERE s.split IS NOT NULL) GROUP BY ALL").fetchall()
        have = {tuple(r[:4]): r[4] for r in held}
        strata = con.execute("SELECT trait, dataset, label, count(*), count(*) FILTER (point < ?), "
                             "count(*) FILTER (point < ?) FROM fate WHERE split IS NULL GROUP BY ALL",
                             list(PLAIN_CUTS)).fetchall()
        at = {"trait": [], "dataset": [], "label": [], "i": [], "j": []}
        for trait, dataset, label, n, below_val, below_test in strata:
            i, j = cuts(n, below_val, below_test, [have.get((trait, dataset, label, s), 0) for s in SPLIT_NAMES],
                        MIN_PER_SPLIT if label != 0 else 0)
            for name, value in zip(at, (trait, dataset, label, i, j)):
                at[name].append(value)
        con.register("cut_at", pa.table(at, schema=pa.schema([("trait", pa.string()), ("dataset", pa.string()),
                                                             ("label", pa.int8()), ("i", pa.int64()),
                                                             ("j", pa.int64())])))
        codes = np.zeros(self.n_read, np.uint8)
        self._code(con, "SELECT f.ordinal, CASE WHEN f.rank < c.i THEN 1 WHEN f.rank < c.j THEN 2 ELSE 3 END FROM "
                   "(SELECT ordinal, trait, dataset, label, row_number() OVER (PARTITION BY trait, dataset, label "
                   "ORDER BY point, prompt_id) - 1 AS rank FROM fate WHERE split IS NULL) f "
                   "JOIN cut_at c USING (trait, dataset, label)", codes)
        # a stored prompt the corpus gives no split keeps its own (written again only if relabelled)
        self._code(con, "SELECT ordinal, list_position(?, split) FROM fate WHERE assigned AND split IS NOT NULL",
                   codes, [list(SPLIT_NAMES)])
        return codes

    @staticmethod
    def _code(con, sql: str, codes: np.ndarray, params=None) -> None:
        """``codes[ordinal] = code`` for each ``(ordinal, code)`` row of ``sql``, streamed."""
        with con.sql(sql, params=params).to_arrow_reader(batch_size=1_000_000) as reader:
            for batch in reader:
                codes[batch.column(0).to_numpy().astype(np.int64)] = batch.column(1).to_numpy(zero_copy_only=False)

    def _connect(self):
        """A private DuckDB connection over the scan, with its ``kept`` table (one row per key)."""
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute("SET memory_limit = ?", [memory_limit()])
        con.execute(f"SET temp_directory='{self.folder / 'spill'}'")
        con.execute("SET preserve_insertion_order=false")
        # DuckDB's own reader for its own temporary file: its buffers count against its memory limit
        con.execute(f"CREATE VIEW scan AS SELECT * FROM read_parquet('{self.folder / 'scan.parquet'}')")
        con.execute("CREATE TEMP TABLE kept AS SELECT prompt_id, dataset, trait, min(ordinal) AS ordinal, "
                    "arg_min(label, ordinal) AS label, arg_min_null(split, ordinal) AS split, min(point) AS point, "
                    "count(DISTINCT label) AS labels FROM scan GROUP BY prompt_id, dataset, trait")
        return con

    def _refuse_conflicts(self, con) -> None:
        """The same (prompt_id, dataset, trait) with two labels: name the first such pair."""
        rows = con.execute("SELECT k.ordinal, min(s.ordinal) AS second FROM kept k JOIN scan s "
                          "USING (prompt_id, dataset, trait) WHERE k.labels > 1 AND s.label <> k.label "
                          "GROUP BY k.ordinal ORDER BY second LIMIT 1").fetchall()
        if not rows:
            return
        first, second = (con.execute("SELECT source, label FROM scan WHERE ordinal = ?", [o]).fetchall()[0]
                         for o in rows[0])
        where, line = second[0].rsplit(":", 1)
        raise CorpusError(where, int(line) if line.isdigit() else None, "label",
                          f"same prompt as {first[0]} but label {second[1]:+d} vs {first[1]:+d}", "remove one of them")

    @staticmethod
    def _mark(con, sql: str, flags: np.ndarray, flag: int) -> None:
        with con.sql(sql).to_arrow_reader(batch_size=1_000_000) as reader:  # streamed, a batch at a time
            for batch in reader:
                flags[batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)] |= flag

    def windows(self, size: int):
        """Pass 2: the kept records, ``size`` at a time, each as ``(record, flags)``, in corpus order.
        They are read back from the scan (not from the corpus again: what pass 1 validated is what
        is captured, even if a corpus file changes meanwhile), one batch of rows at a time."""
        out = []
        with open(self.folder / "scan.parquet", "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=size):
                ordinals = batch.column(0).to_numpy()
                flags, assigned = self.flags[ordinals], self.assigned[ordinals]
                picked = np.flatnonzero(flags & KEEP)
                if not len(picked):
                    continue
                rows = batch.take(pa.array(picked)).to_pylist()
                for r, fl, a in zip(rows, flags[picked], assigned[picked]):
                    out.append((PromptRecord(r["prompt_id"], r["text"],
                                             json.loads(r["messages"]) if r["messages"] is not None else None,
                                             r["dataset"], r["trait"], r["label"], r["split"] or SPLIT_NAMES[a - 1],
                                             r["source"],
                                             json.loads(r["extra"]) if r["extra"] else {}), int(fl)))
                    if len(out) >= size:
                        yield out
                        out = []
        if out:
            yield out

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scan_corpus(paths, opts: ReadOptions | None = None, require_assistant: bool = False) -> CorpusScan:
    """Pass 1: validate every record of ``paths`` and keep its key on disk (see the module).
    ``require_assistant`` (``assistant_mean`` pooling): every record must be a chat with an
    assistant turn to pool over."""
    opts = opts or ReadOptions()
    scan = CorpusScan(list(paths), opts, Path(tempfile.mkdtemp(prefix="traitlens-scan-")))
    cols: dict[str, list] = {n: [] for n in SCAN_SCHEMA.names}
    n = 0
    try:
        with pq.ParquetWriter(scan.folder / "scan.parquet", SCAN_SCHEMA, compression="zstd") as w:
            for rec in _records(scan.paths, opts):
                if require_assistant and not rec.has_assistant_turn:
                    path, _, line = rec.source.rpartition(":")
                    raise CorpusError(path, int(line) if line.isdigit() else None, "messages",
                                      "no assistant turn to pool over (--pooling assistant_mean)",
                                      "give chat records whose messages include the assistant's reply, or "
                                      "capture this corpus with --pooling last/mean")
                row = rec.as_row()
                for name, value in zip(SCAN_SCHEMA.names, (n, rec.prompt_id, rec.dataset, rec.trait, rec.label,
                                                           rec.split, rec.source, rec.text, row["messages"],
                                                           row["extra"] if rec.extra else None,
                                                           hash_point(rec.prompt_id))):
                    cols[name].append(value)
                n += 1
                if len(cols["ordinal"]) >= ROW_GROUP:
                    w.write_table(pa.table(cols, schema=SCAN_SCHEMA))
                    cols = {k: [] for k in cols}
            if cols["ordinal"]:
                w.write_table(pa.table(cols, schema=SCAN_SCHEMA))
        scan.n_read = n
        con = scan._connect()
        try:
            scan._refuse_conflicts(con)  # part of validation: before anything is written
        finally:
            con.close()
    except BaseException:
        scan.close()
        raise
    return scan


def read_corpus(paths, opts: ReadOptions | None = None, store=None) -> tuple[list[PromptRecord], int]:
    """Every kept record of a (small) corpus as a list, and the duplicates skipped: the same
    rules as an ingest (first of each (prompt_id, dataset, trait) kept; another label is an error).
    Splits the corpus does not give are those an ingest into ``store`` would give (None: a new store)."""
    with scan_corpus(paths, opts) as scan:
        scan.decide(store)
        return [r for w in scan.windows(1 << 30) for r, _ in w], scan.n_duplicates
