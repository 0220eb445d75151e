"""Plan the ingest of a corpus of any length: one validating pass, joins in DuckDB, then windows.

1. :func:`scan_corpus` reads every record once and validates it (a bad one raises
   :class:`CorpusError` naming file:line, before anything is written; so does the same
   (prompt_id, dataset, trait) with two labels, naming both places). The readers
   (:mod:`.readers`) hand it Arrow batches; it keeps each record as one row of a private
   temporary Parquet part per source file (keys, label, split, source, text, messages, extra),
   never more than one row group of them in memory. ``--limit N`` stops reading after N
   records; ``--sample N`` keeps N of them (see :meth:`CorpusScan.decide`).
2. :meth:`CorpusScan.decide` answers, in DuckDB under a memory limit (:func:`memory_limit`; past
   it DuckDB spills to its private temporary folder), what the rest of the run needs, as one
   byte per record:

   - ``KEEP``: the first record of its (prompt_id, dataset, trait); the others are duplicates.
     With ``--sample N --seed S``, only the N keys whose ``sha256("S:prompt_id:dataset:trait")``
     are smallest: the same corpus and seed keep the same records, and a grown corpus keeps
     most of them (a record leaves the sample only for a newcomer whose hash is smaller);
   - ``NEW`` / ``RELABELLED``: a kept record whose key the store lacks, or holds with another
     label or split (its newest record, as everywhere; a record without a split keeps the stored one);
   - ``CAPTURE``: the first kept record of its prompt, when the prompt is not committed in every
     group this run writes;

   and, as one more byte a record, the split of each new record the corpus gave none
   (:mod:`.splits`: stratified by label): DuckDB counts and ranks each stratum,
   :func:`.splits.cuts` says where to cut it.
3. :meth:`CorpusScan.windows` reads the scan back and yields the kept records ``window`` at a
   time with their flags (the corpus is parsed once).

So an ingest holds one window of records in Python, whatever the corpus's length: a 10M-line
corpus costs a flag byte per line in memory, and the rest on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traitlens.store.layout import GroupKey
from traitlens.store.location import capabilities
from traitlens.store.vocabulary import MIN_PER_SPLIT, SPLIT_NAMES

from traitlens.pipeline.capture.corpus import CorpusError, PromptRecord, ReadOptions, records_of
from traitlens.pipeline.capture.readers.batches import source_attempts
from traitlens.pipeline.capture.readers.normalise import COLUMNS, NotExact
from traitlens.pipeline.capture.readers.sources import expand
from traitlens.pipeline.capture.splits import PLAIN_CUTS, POINT_SQL, cuts

KEEP, NEW, RELABELLED, CAPTURE = 1, 2, 4, 8
SCAN_SCHEMA = pa.schema([("ordinal", pa.int64()), *COLUMNS])  # messages and extra as JSON
KEY = "prompt_id, dataset, trait"
# the newest stored record of each key of the store's prompts whose ``using`` columns ``keys`` (SQL) holds
NEWEST = ("SELECT prompt_id, dataset, trait, label, split FROM store_prompts SEMI JOIN {keys} USING ({using}) "
          "QUALIFY row_number() OVER (PARTITION BY prompt_id, dataset, trait ORDER BY added_at DESC NULLS LAST) = 1")
CUTS_SCHEMA = pa.schema([("trait", pa.string()), ("dataset", pa.string()), ("label", pa.int8()), ("i", pa.int64()),
                         ("j", pa.int64())])
ROW_GROUP = 65_536
# the scan is a private temporary file, read back once or twice: LZ4, dictionaries only for the
# columns that repeat a few values, no page statistics (nothing filters on them). Half the CPU
# of zstd with dictionaries everywhere, for twice the bytes (1M short prompts: 0.2 s, 41 MB)
SCAN_WRITE = {"compression": "lz4", "use_dictionary": ["dataset", "trait", "split", "messages", "extra"],
              "write_statistics": False}
MEMORY_LIMIT = "2GB"  # DuckDB's share while deciding; past it, it spills to disk


def memory_limit() -> str:
    """DuckDB's memory limit for the plan (``TRAITLENS_PLAN_MEMORY`` overrides :data:`MEMORY_LIMIT`)."""
    return os.environ.get("TRAITLENS_PLAN_MEMORY", MEMORY_LIMIT)


@dataclass
class CorpusScan:
    """A validated corpus: its records' keys on disk, their flags once decided."""

    paths: list
    opts: ReadOptions
    folder: Path  # private temporary folder holding scan/*.parquet (and DuckDB's spill files)
    n_read: int = 0
    n_keys: int = 0  # distinct (prompt_id, dataset, trait) read, before any --sample
    n_distinct: int = 0  # distinct prompts among the kept records (set by decide)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # uint8 [n_read]
    # uint8 [n_read]: 1 + the index in SPLIT_NAMES of the split given to a kept record the corpus
    # gave none (0: none given here; see decide)
    assigned: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    _con: object = field(default=None, repr=False)  # DuckDB, while deciding (see _connection)

    @property
    def n_records(self) -> int:
        """Records kept (one per (prompt_id, dataset, trait))."""
        return int(np.count_nonzero(self.flags & KEEP))

    @property
    def n_duplicates(self) -> int:
        return self.n_read - self.n_keys

    @property
    def n_left_out(self) -> int:
        """Keys read but not in the ``--sample``."""
        return self.n_keys - self.n_records

    def count(self, flag: int) -> int:
        return int(np.count_nonzero(self.flags & flag))

    def decide(self, store=None, groups: list[GroupKey] = (), every_split: bool = False) -> "CorpusScan":
        """Set every record's flags against ``store`` (None: a store that does not exist yet),
        and the splits of the records the corpus gave none: a new record's by :mod:`.splits`, a
        relabelled one's the stored split (``every_split``: every stored record's, which a plain
        ingest does not need, since it writes only new and relabelled records).

        Each flag is one join of the corpus's keys with a store table, never an aggregation of
        the store's tables: a rerun with nothing new costs one hash join with ``prompts`` and
        one per group with ``rows``; the newest stored record of a key is looked up only for
        the keys with a stored record that differs from the corpus's, and the stored prompts of
        a (trait, dataset) are counted only when new records of it need a split."""
        con = self._connection()
        if self.opts.sample is not None:  # (without a sample, _connection counted them)
            self.n_distinct = con.execute("SELECT count(DISTINCT prompt_id) FROM kept").fetchall()[0][0]
        flags = np.zeros(self.n_read, np.uint8)
        if self.opts.sample is None and self.n_keys == self.n_read:
            flags |= KEEP  # no duplicate: every record is the first of its key
        else:
            self._mark(con, "SELECT ordinal FROM kept", flags, KEEP)
        if store is not None:
            with _store_table(con, "store_prompts", store.tables["prompts"]):
                try:
                    # one join: the kept keys the store lacks, and those with a stored record that differs
                    # (a record without a split differs in its label only: it keeps the stored split)
                    con.execute("CREATE OR REPLACE TEMP TABLE unlike AS SELECT k.ordinal, k.prompt_id, k.dataset, "
                                "k.trait, k.label, k.split, s.prompt_id IS NULL AS new FROM kept k "
                                "LEFT JOIN store_prompts s USING (prompt_id, dataset, trait) WHERE s.prompt_id IS NULL "
                                "OR s.label <> k.label OR (k.split IS NOT NULL AND s.split IS DISTINCT FROM k.split)")
                    self._mark(con, "SELECT ordinal FROM unlike WHERE new", flags, NEW)
                    # relabelled: the key's newest stored record differs (looked up for those keys only)
                    con.execute(f"""CREATE OR REPLACE TEMP TABLE relabelled AS
                        WITH newest AS ({NEWEST.format(keys="(SELECT * FROM unlike WHERE NOT new)", using=KEY)})
                        SELECT DISTINCT u.ordinal, u.split, s.split AS stored FROM unlike u
                        JOIN newest s USING (prompt_id, dataset, trait)
                        WHERE NOT u.new AND (u.label <> s.label OR (u.split IS NOT NULL AND u.split IS DISTINCT FROM s.split))""")
                    self._mark(con, "SELECT ordinal FROM relabelled", flags, RELABELLED)
                    self.assigned = self._assign_splits(con, "SELECT * FROM unlike WHERE new", True, every_split)
                finally:
                    for t in ("unlike", "relabelled"):
                        con.execute(f"DROP TABLE IF EXISTS {t}")
        else:
            flags[(flags & KEEP) > 0] |= NEW
            self.assigned = self._assign_splits(con, "SELECT * FROM kept", False, every_split)
        if store is not None and groups:
            # a prompt to capture lacks a row in at least one group: one anti join per group
            missing = " UNION ".join(["SELECT k.prompt_id FROM kept k ANTI JOIN (SELECT prompt_id FROM store_rows "
                                      "WHERE model_key = ? AND fmt = ? AND site = ? AND pooling = ?) r "
                                      "USING (prompt_id)"] * len(groups))
            with _store_table(con, "store_rows", store.tables["rows"]):
                self._mark(con, f"SELECT min(ordinal) FROM kept WHERE prompt_id IN ({missing}) GROUP BY prompt_id",
                           flags, CAPTURE, [v for g in groups for v in (g.model_key, g.fmt, g.site, g.pooling)])
        else:  # in no group yet: the first record of every prompt
            self._mark(con, "SELECT min(ordinal) FROM kept GROUP BY prompt_id", flags, CAPTURE)
        self.flags = flags
        return self

    def _assign_splits(self, con, new: str, stored: bool, every_split: bool) -> np.ndarray:
        """Codes (see :attr:`assigned`) for the kept records without a split: those of the new
        records ``new`` (SQL) by the rule of :mod:`.splits`, and the stored split of the
        relabelled ones (``every_split``: of every stored one). ``stored``: there is a store, and
        ``store_prompts``, ``unlike`` and ``relabelled`` are registered."""
        codes = np.zeros(self.n_read, np.uint8)
        con.execute(f"CREATE OR REPLACE TEMP TABLE todo AS SELECT ordinal, prompt_id, dataset, trait, label, "
                    f"{POINT_SQL} AS point FROM ({new}) WHERE split IS NULL")
        try:
            strata = con.execute("SELECT trait, dataset, label, count(*), count(*) FILTER (point < ?), count(*) "
                                 "FILTER (point < ?) FROM todo GROUP BY ALL", list(PLAIN_CUTS)).fetchall()
            if strata:
                # what each stratum holds already: the corpus's other records (their split given, or
                # stored), and the stored prompts the corpus lacks (their newest records)
                newest = "SELECT NULL::VARCHAR AS prompt_id, NULL::VARCHAR AS dataset, NULL::VARCHAR AS trait, " \
                         "NULL::TINYINT AS label, NULL::VARCHAR AS split WHERE false"
                if stored:
                    newest = NEWEST.format(keys="(SELECT DISTINCT trait, dataset FROM todo)", using="trait, dataset")
                held = con.execute(f"""WITH newest AS ({newest}),
                    mine AS (SELECT k.trait, k.dataset, k.label, coalesce(k.split, s.split) AS split FROM kept k
                             SEMI JOIN (SELECT DISTINCT trait, dataset FROM todo) t USING (trait, dataset)
                             ANTI JOIN todo USING (ordinal) LEFT JOIN newest s USING (prompt_id, dataset, trait)),
                    theirs AS (SELECT s.trait, s.dataset, s.label, s.split FROM newest s
                               ANTI JOIN kept k USING (prompt_id, dataset, trait))
                    SELECT trait, dataset, label, split, count(*) FROM (SELECT * FROM mine UNION ALL SELECT * FROM theirs)
                    WHERE split IS NOT NULL GROUP BY ALL""").fetchall()
                have = {tuple(r[:4]): r[4] for r in held}
                at = {"trait": [], "dataset": [], "label": [], "i": [], "j": []}
                for trait, dataset, label, n, below_val, below_test in strata:
                    i, j = cuts(n, below_val, below_test, [have.get((trait, dataset, label, s), 0) for s in SPLIT_NAMES],
                                MIN_PER_SPLIT if label != 0 else 0)
                    for name, value in zip(at, (trait, dataset, label, i, j)):
                        at[name].append(value)
                con.register("cut_at", pa.table(at, schema=CUTS_SCHEMA))
                try:
                    self._code(con, "SELECT t.ordinal, CASE WHEN t.rank < c.i THEN 1 WHEN t.rank < c.j THEN 2 ELSE 3 "
                               "END FROM (SELECT ordinal, trait, dataset, label, row_number() OVER (PARTITION BY trait, "
                               "dataset, label ORDER BY point, prompt_id) - 1 AS rank FROM todo) t "
                               "JOIN cut_at c USING (trait, dataset, label)", codes)
                finally:
                    con.unregister("cut_at")
            if stored:  # a stored prompt the corpus gives no split keeps its own
                if every_split:
                    keys = "(SELECT * FROM kept WHERE split IS NULL AND ordinal NOT IN (SELECT ordinal FROM todo))"
                    self._code(con, f"WITH newest AS ({NEWEST.format(keys=keys, using=KEY)}) SELECT k.ordinal, "
                               "list_position(?, s.split) FROM kept k JOIN newest s USING (prompt_id, dataset, trait) "
                               "WHERE k.split IS NULL AND s.split IS NOT NULL", codes, [list(SPLIT_NAMES)])
                else:
                    self._code(con, "SELECT ordinal, list_position(?, stored) FROM relabelled WHERE split IS NULL "
                               "AND stored IS NOT NULL", codes, [list(SPLIT_NAMES)])
        finally:
            con.execute("DROP TABLE IF EXISTS todo")
        return codes

    @staticmethod
    def _code(con, sql: str, codes: np.ndarray, params=None) -> None:
        """``codes[ordinal] = code`` for each ``(ordinal, code)`` row of ``sql``, streamed."""
        with con.sql(sql, params=params).to_arrow_reader(1_000_000) as reader:
            for batch in reader:
                codes[batch.column(0).to_numpy().astype(np.int64)] = batch.column(1).to_numpy(zero_copy_only=False)

    def _connection(self):
        """The scan's private DuckDB connection, made once (pass 1's checks and every
        :meth:`decide` share it; :meth:`windows` lets it go): ``scan``, a view of the scan's
        Parquet parts; ``keys``, one row per (prompt_id, dataset, trait) read with its first
        record's ordinal, label and split; ``kept``, the keys the run keeps (the ``--sample``'s,
        or all of them)."""
        if self._con is not None:
            return self._con
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            con.execute("SET memory_limit = ?", [memory_limit()])
            con.execute(f"SET temp_directory='{self.folder / 'spill'}'")
            con.execute("SET preserve_insertion_order=false")
            # DuckDB's own reader for its own temporary files: its buffers count against its memory limit
            con.execute(f"CREATE VIEW scan AS SELECT * FROM read_parquet('{self.folder / 'scan' / '*.parquet'}')")
            # distinct prompts are distinct keys (the usual corpus): one count tells both
            n_ids = con.execute("SELECT count(DISTINCT prompt_id) FROM scan").fetchall()[0][0]
            n_keys = n_ids if n_ids == self.n_read else con.execute(
                "SELECT count(*) FROM (SELECT DISTINCT prompt_id, dataset, trait FROM scan)").fetchall()[0][0]
            if n_keys == self.n_read:  # no duplicate (the usual corpus): each record is its key's first,
                # read from the scan by each join (a copy in DuckDB's memory costs more than it saves)
                con.execute("CREATE VIEW keys AS SELECT prompt_id, dataset, trait, ordinal, label, split, "
                            "label AS lowest, label AS highest FROM scan")
            else:
                con.execute("CREATE TEMP TABLE keys AS SELECT prompt_id, dataset, trait, min(ordinal) AS ordinal, "
                            "arg_min(label, ordinal) AS label, arg_min_null(split, ordinal) AS split, "
                            "min(label) AS lowest, max(label) AS highest FROM scan GROUP BY prompt_id, dataset, trait")
            if self.opts.sample is not None:
                con.execute("CREATE TEMP TABLE kept AS SELECT * FROM keys ORDER BY "
                            "sha256(? || ':' || prompt_id || ':' || dataset || ':' || trait) LIMIT ?",
                            [str(self.opts.seed), int(self.opts.sample)])
            else:
                con.execute("CREATE VIEW kept AS SELECT * FROM keys")
                self.n_distinct = n_ids  # every key is kept: so is every prompt read
            self.n_keys = n_keys
        except BaseException:
            con.close()
            raise
        self._con = con
        return con

    def _release(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _refuse_conflicts(self, con) -> None:
        """The same (prompt_id, dataset, trait) with two labels: name the first such pair."""
        if self.n_keys == self.n_read:
            return  # no key read twice
        rows = con.execute("SELECT k.ordinal, min(s.ordinal) AS second FROM keys k JOIN scan s "
                          "USING (prompt_id, dataset, trait) WHERE k.lowest < k.highest AND s.label <> k.label "
                          "GROUP BY k.ordinal ORDER BY second LIMIT 1").fetchall()
        if not rows:
            return
        first, second = (con.execute("SELECT source, label FROM scan WHERE ordinal = ?", [o]).fetchall()[0]
                         for o in rows[0])
        where, line = second[0].rsplit(":", 1)
        raise CorpusError(where, int(line) if line.isdigit() else None, "label",
                          f"same prompt as {first[0]} but label {second[1]:+d} vs {first[1]:+d}", "remove one of them")

    @staticmethod
    def _mark(con, sql: str, flags: np.ndarray, flag: int, params=None) -> None:
        with con.sql(sql, params=params).to_arrow_reader(1_000_000) as reader:  # streamed, a batch at a time
            for batch in reader:
                flags[batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)] |= flag

    def windows(self, size: int, want: int = KEEP):
        """Pass 2: the kept records, ``size`` at a time, each as ``(record, flags)``, in corpus order
        (``want``: only those with one of these flags). They are read back from the scan (not from
        the corpus again: what pass 1 validated is what is captured, even if a corpus file changes
        meanwhile), one batch of rows at a time. DuckDB's memory is let go first."""
        self._release()
        out = []
        for batch in self._scan_batches(size):
            ordinals = batch.column(0).to_numpy()
            flags, assigned = self.flags[ordinals], self.assigned[ordinals]
            picked = np.flatnonzero(((flags & KEEP) != 0) & ((flags & want) != 0))
            if not len(picked):
                continue
            for r, fl, a in zip(records_of(batch.take(pa.array(picked))), flags[picked], assigned[picked]):
                if a:
                    r.split = SPLIT_NAMES[a - 1]
                out.append((r, int(fl)))
                if len(out) >= size:
                    yield out
                    out = []
        if out:
            yield out

    def _scan_batches(self, size: int):
        for part in sorted((self.folder / "scan").glob("*.parquet")):
            with open(part, "rb") as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=size)

    def close(self) -> None:
        self._release()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def _store_table(con, name: str, table):
    """``name``: the live parts of the store table ``table`` (a :class:`~traitlens.store.table.StoreTable`),
    for DuckDB while the block runs. A local store's parts are read by DuckDB's own Parquet
    reader (against a 1M-prompt store the plan's joins then cost ~0.5 CPU-s less than through
    a ``pyarrow.dataset``); the table's empty schema, united by name, keeps its columns and
    types where no part has a column yet (it reads NULL, as through the schema). Object
    storage: the table's ``pyarrow.dataset``, which reads through the store's filesystem."""
    parts = table.live_files()
    if not parts or not capabilities(parts[0]).local_files:
        con.register(name, table.dataset())
        try:
            yield
        finally:
            con.unregister(name)
        return
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
    con.register(f"{name}_schema", table.schema.empty_table())
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {name}_schema UNION ALL BY NAME "
                    f"SELECT * FROM read_parquet([{files}], union_by_name = true)")
        yield
    finally:
        con.execute(f"DROP VIEW IF EXISTS {name}")
        con.unregister(f"{name}_schema")


SCAN_PREFIX = "traitlens-scan-"  # + the pid of the process that owns the folder, + a random suffix


def _scan_folder() -> Path:
    """A private folder for one scan, named after this process, after removing the folders of
    scans whose process is gone (a ``kill -9`` or power cut leaves its folder behind: the
    corpus's keys, up to tens of MB a million prompts)."""
    from datetime import datetime, timezone

    from traitlens.store.runs import process_alive

    for old in Path(tempfile.gettempdir()).glob(f"{SCAN_PREFIX}*-*"):
        try:
            pid = int(old.name[len(SCAN_PREFIX):].split("-", 1)[0])
            # the owner started before its folder changed last: a younger process with the same pid is not it
            changed = datetime.fromtimestamp(old.stat().st_mtime, timezone.utc)
        except (ValueError, OSError):
            continue  # not a scan folder of this scheme, or already gone
        if pid != os.getpid() and not process_alive(pid, changed):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCAN_PREFIX}{os.getpid()}-"))


def scan_corpus(paths, opts: ReadOptions | None = None, require_assistant: bool = False) -> CorpusScan:
    """Pass 1: validate every record of ``paths`` and keep its key on disk (see the module).
    ``require_assistant`` (``assistant_mean`` pooling): every record must be a chat with an
    assistant turn to pool over."""
    opts = opts or ReadOptions()
    sources = expand(paths)  # a missing file, an unknown type, a hub id: refused before reading
    scan = CorpusScan(list(paths), opts, _scan_folder())
    try:
        (scan.folder / "scan").mkdir()
        for k, src in enumerate(sources):
            if opts.limit is not None and scan.n_read >= opts.limit:
                break
            attempts = source_attempts(src, opts)
            for i, attempt in enumerate(attempts):
                try:
                    scan.n_read = _scan_source(attempt(), scan.folder / "scan" / f"{k:06d}.parquet", scan.n_read,
                                               opts.limit, require_assistant)
                    break
                except NotExact:  # the fast reading gave way: the next attempt rewrites this source's part
                    if i == len(attempts) - 1:
                        raise
        if not any((scan.folder / "scan").iterdir()):
            pq.write_table(SCAN_SCHEMA.empty_table(), scan.folder / "scan" / "empty.parquet")
        scan._refuse_conflicts(scan._connection())  # part of validation: before anything is written
    except BaseException:
        scan.close()
        raise
    return scan


def _scan_source(batches, part: Path, start: int, limit: int | None, require_assistant: bool) -> int:
    """Write one source's batches to ``part`` with ordinals from ``start``; returns the next
    ordinal. Rows are gathered into row groups of :data:`ROW_GROUP`."""
    n, held, held_rows = start, [], 0
    with pq.ParquetWriter(part, SCAN_SCHEMA, **SCAN_WRITE) as w:
        for b in batches:
            if limit is not None and n + b.num_rows > limit:
                b = b.slice(0, limit - n)
            if require_assistant:
                _require_assistant(b)
            held.append(pa.RecordBatch.from_arrays([pa.array(np.arange(n, n + b.num_rows, dtype=np.int64)),
                                                    *b.columns], schema=SCAN_SCHEMA))
            n += b.num_rows
            held_rows += b.num_rows
            if held_rows >= ROW_GROUP:
                w.write_table(pa.Table.from_batches(held))
                held, held_rows = [], 0
            if limit is not None and n >= limit:
                break
        if held:
            w.write_table(pa.Table.from_batches(held))
    return n


def _require_assistant(batch: pa.RecordBatch) -> None:
    """``assistant_mean`` pools over assistant turns: every record must be a chat that has one."""
    for rec in records_of(batch):
        if not rec.has_assistant_turn:
            path, _, line = rec.source.rpartition(":")
            raise CorpusError(path, int(line) if line.isdigit() else None, "messages",
                              "no assistant turn to pool over (--pooling assistant_mean)",
                              "give chat records whose messages include the assistant's reply, or "
                              "capture this corpus with --pooling last/mean")


def read_corpus(paths, opts: ReadOptions | None = None, store=None) -> tuple[list[PromptRecord], int]:
    """Every kept record of a (small) corpus as a list, and the duplicates skipped: the same
    rules as an ingest (first of each (prompt_id, dataset, trait) kept; another label is an error).
    Splits the corpus does not give are those of an ingest into ``store`` (None: a new store)."""
    with scan_corpus(paths, opts) as scan:
        scan.decide(store, every_split=True)
        return [r for w in scan.windows(1 << 30) for r, _ in w], scan.n_duplicates
