"""A read-only DuckDB connection over a store: views, never copies.

Views:
- ``prompts``, ``rows``, ``runs``: the Parquet tables (``runs`` shows each run's latest record);
- ``vectors``: one row per vector, ``vector`` cast to ``FLOAT[d]`` so ``array_cosine_similarity``
  and ``array_inner_product`` work (with several widths d in one store, ``vectors`` keeps
  ``FLOAT[]`` lists and ``vectors_d<d>`` views hold the fixed-size ones);
- ``metrics``: the vectors table without the vector column, with ``steer_shift``, ``steer_kl``
  and ``steer_capability`` (the best push within the KL budget, its KL and its worst lm-eval fall);
- ``steering``, ``steering_together`` (pushes measured at once), ``capability`` (lm-eval tasks
  under a push), ``trajectories``, ``scores`` (with each score's ``percentile`` among the prompts
  scored on its vector) and ``scored`` (scores beside the prompt's text, dataset, trait, label);
- ``act_L<layer>`` (and ``act_<n>_L<layer>`` for group n of ``groups``): one layer's committed
  activations as ``(row, prompt_id, vector FLOAT[d])``, streamed from Zarr as Arrow batches
  each time a statement names it;
- ``groups``: the stored (model_key, fmt, site, pooling) groups, numbered for ``act_<n>_L<k>``.
Macros: ``nearest(vector_id, k)`` — the k stored vectors closest by cosine, any trait, layer
or model of the same width.

Guard: only SELECT-like statements run (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE);
file access is limited to the store's tables folder and the configuration is locked, so a
query can neither change the store nor read files outside it. DuckDB always allows its temp
directory too (by default ``.tmp`` under the working folder), so each connection gets a fresh
private one that holds nothing but its own spill files. A statement stops after ``timeout``
seconds (a :class:`QueryError`); Ctrl-C stops it at once (``KeyboardInterrupt``).

A store on object storage is read through pyarrow datasets over its fsspec filesystem
(registered with DuckDB, scanned lazily with projection and filter pushdown), and DuckDB gets
no file access at all.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from traitlens.store import GroupKey, Store, StoreError
from traitlens.store.arrays import read_rows_checked
from traitlens.store.errors import InputError, Terminated
from traitlens.store.layout import layer_name
from traitlens.store.location import StorePath, arrow_files, as_local, capabilities
from traitlens.store.vocabulary import LOOSE_KIND

from .budget import KL_BUDGET

READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}
ACT_NAME = re.compile(r"\bact_(?:(\d+)_)?L(\d+)\b", re.IGNORECASE)
BATCH_ROWS = 8192


class QueryError(InputError):
    """A statement was refused or failed; the message is DuckDB's or says what is allowed."""


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_floating(t):
        return "DOUBLE" if t.bit_width == 64 else "FLOAT"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {t}")


class StoreSQL:
    """``StoreSQL(store).query("SELECT ...")`` -> ``pyarrow.Table``."""

    def __init__(self, store: Store | str | StorePath) -> None:
        self.store = store if isinstance(store, Store) else Store.open(store)
        self.con = duckdb.connect(":memory:")
        self._reader_error: StoreError | None = None  # what stopped an activation stream (see query)
        self._spill = tempfile.mkdtemp(prefix="traitlens-sql-")  # empty but for DuckDB's own spill files
        self.con.execute(f"SET temp_directory={_quote(Path(self._spill))}")
        try:
            self.groups = self.store.groups()
            self._create_views()
        except BaseException:
            self.close()
            raise
        if capabilities(self.store.root).local_files:  # DuckDB reads the files itself: only these
            tables_dir = str(self.store.tables_path.resolve())
            self.con.execute(f"SET allowed_directories=[{_quote(Path(tables_dir))}]")
        self.con.execute("SET enable_external_access=false")
        self.con.execute("SET lock_configuration=true")

    # -- views ---------------------------------------------------------------------------------
    def _table_view(self, name: str, select: str = "*") -> None:
        table = self.store.tables[name]
        parts = table.live_files()
        if parts and capabilities(parts[0]).local_files:
            listing = "[" + ", ".join(_quote(as_local(p).resolve()) for p in parts) + "]"
            src = f"read_parquet({listing}, union_by_name=true)"
        elif parts:  # DuckDB gets no file access: pyarrow reads through the filesystem object
            fs, files = arrow_files(parts)
            self.con.register(f"__parts_{name}", pads.dataset(files, filesystem=fs, format="parquet",
                                                              schema=table.schema))
            src = f"__parts_{name}"
        else:  # no part yet: an empty relation with the table's columns
            self.con.register(f"__empty_{name}", table.schema.empty_table())
            src = f"__empty_{name}"
        try:
            have = {d[0] for d in self.con.execute(f"SELECT * FROM {src} LIMIT 0").description}
        except duckdb.Error as e:  # a damaged part: name it, with the fix
            raise table.damaged_error(e) from None
        # parts written before a column existed read as NULL in it, so every view has the full schema
        missing = [f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in table.schema if f.name not in have]
        extra = (", " + ", ".join(missing)) if missing else ""
        self.con.execute(f"CREATE VIEW {name}_all AS SELECT *{extra} FROM {src}")
        self.con.execute(f"CREATE VIEW {name} AS SELECT {select} FROM {name}_all")

    def _create_views(self) -> None:
        self._table_view("prompts")
        # labels and splits are data: the newest record of a (prompt, dataset, trait) wins
        self.con.execute("CREATE OR REPLACE VIEW prompts AS SELECT * FROM prompts_all QUALIFY row_number() OVER "
                         "(PARTITION BY prompt_id, dataset, trait ORDER BY added_at DESC NULLS LAST) = 1")
        self._table_view("rows")
        self._table_view("runs")
        self.con.execute("CREATE OR REPLACE VIEW runs AS SELECT * EXCLUDE (rk) FROM (SELECT *, row_number() OVER "
                         "(PARTITION BY run_id ORDER BY ended_at DESC NULLS LAST) AS rk FROM runs_all) WHERE rk = 1")
        self._table_view("vectors")
        dims = [r[0] for r in self.con.execute("SELECT DISTINCT d FROM vectors_all WHERE d IS NOT NULL").fetchall()]
        if len(dims) == 1:
            self.con.execute(f"CREATE OR REPLACE VIEW vectors AS SELECT * REPLACE (vector::FLOAT[{dims[0]}] AS vector) "
                             "FROM vectors_all")
        for d in dims:
            self.con.execute(f"CREATE VIEW vectors_d{d} AS SELECT * REPLACE (vector::FLOAT[{d}] AS vector) "
                             f"FROM vectors_all WHERE d = {int(d)}")
        self._table_view("steering")
        self._table_view("trajectories")
        self._table_view("steering_samples")
        self._table_view("lens")
        self._table_view("conditions")
        self._table_view("steering_together")
        self._table_view("capability")
        # scores with their percentile among every prompt scored on the same vector (computed
        # here, so it is never stale as more prompts are scored)
        self._table_view("scores", "*, percent_rank() OVER (PARTITION BY vector_id ORDER BY score) AS percentile")
        # each score beside its prompt's newest record (text, dataset, the trait and label it carries)
        self.con.execute("CREATE VIEW scored AS SELECT s.*, p.text, p.dataset, p.trait AS prompt_trait, p.label "
                         "FROM scores s LEFT JOIN (SELECT prompt_id, text, dataset, trait, label FROM prompts "
                         "QUALIFY row_number() OVER (PARTITION BY prompt_id ORDER BY added_at DESC) = 1) p "
                         "USING (prompt_id)")
        # the projection difference (persona-vector data screening): a dataset reply's score minus
        # that of the model's own reply to the same conversation, on the same vector
        self._table_view("replies")
        self.con.execute("CREATE VIEW projection_diffs AS SELECT r.prompt_id, r.reply_prompt_id, r.model_key, "
                         "r.generate, d.vector_id, d.trait, d.layer, d.score AS dataset_score, m.score AS reply_score, "
                         "d.score - m.score AS diff, d.calibrated - m.calibrated AS calibrated_diff, r.reply "
                         "FROM replies r JOIN scores d ON d.prompt_id = r.prompt_id "
                         "JOIN scores m ON m.prompt_id = r.reply_prompt_id AND m.vector_id = d.vector_id")
        # the best causal shift measured for each vector within the damage budget, and its KL (NULL
        # until `traitlens evaluate --steering`; rows stored before damage was measured have no KL
        # and still count); the loose first-token refusal measure never outranks the strict ones;
        # pushes only (an ablation is not a shift to rank by). steer_capability: the worst fall of
        # any lm-eval metric at that setting, in its good direction (NULL: no --capability run)
        self.con.execute("CREATE VIEW metrics AS SELECT v.* EXCLUDE (vector), s.steer_shift, s.steer_kl, "
                         "s.steer_capability FROM vectors_all v LEFT JOIN (SELECT st.vector_id, max(st.shift) AS "
                         "steer_shift, arg_max(st.kl, st.shift) AS steer_kl, arg_max({'fall': c.fall}, st.shift).fall "
                         "AS steer_capability FROM steering st LEFT JOIN (SELECT vector_id, layer, alpha, run_id, "
                         "greatest(0, max(CASE WHEN higher_is_better = false THEN change ELSE -change END)) AS fall "
                         "FROM capability WHERE operation = 'add' GROUP BY ALL) c ON c.vector_id = st.vector_id AND "
                         "c.layer = st.layer AND c.alpha = st.alpha AND c.run_id = st.run_id "
                         f"WHERE st.kind <> '{LOOSE_KIND}' AND coalesce(st.operation, 'add') = 'add' "
                         f"AND (st.kl IS NULL OR st.kl <= {float(KL_BUDGET)!r}) GROUP BY st.vector_id) s "
                         "USING (vector_id)")
        rows = [(i, *g.as_dict().values()) for i, g in enumerate(self.groups)]
        self.con.register("__groups", pa.table({"n": [r[0] for r in rows], "model_key": [r[1] for r in rows],
                                                "fmt": [r[2] for r in rows], "site": [r[3] for r in rows],
                                                "pooling": [r[4] for r in rows]}))
        self.con.execute("CREATE VIEW groups AS SELECT * FROM __groups")
        if len(dims) == 1:
            self.con.execute(
                "CREATE MACRO nearest(vid, k) AS TABLE SELECT o.vector_id, o.trait, o.model_key, o.layer, o.method, "
                "array_cosine_similarity(o.vector, q.vector) AS cosine FROM vectors o, "
                "(SELECT vector FROM vectors WHERE vector_id = vid) q WHERE o.vector_id <> vid "
                "ORDER BY cosine DESC LIMIT k")

    # -- activations ---------------------------------------------------------------------------
    def activation_reader(self, key: GroupKey, layer: int, batch_rows: int = BATCH_ROWS) -> pa.RecordBatchReader:
        """One layer's committed rows as Arrow batches ``(row int64, prompt_id, vector FLOAT[d])``."""
        if key.pooling == "tokens":
            raise QueryError("tokens pooling has one row per token; query it from Python (Store.activations)")
        committed = self.store.group_rows(key).select(["row", "prompt_id"])
        if layer not in self.store.layers(key):
            raise QueryError(f"layer {layer} is not stored for {key.path}; stored: {self.store.layers(key)}")
        arr = self.store.layer_array(key, layer, committed.num_rows)
        d = arr.shape[1]
        schema = pa.schema([("row", pa.int64()), ("prompt_id", pa.string()), ("vector", pa.list_(pa.float32(), d))])
        where = f"{key.path}/{layer_name(layer)}"

        def batches() -> Iterator[pa.RecordBatch]:
            n = committed.num_rows
            for s in range(0, n, batch_rows):
                e = min(n, s + batch_rows)
                try:
                    vals = np.ascontiguousarray(read_rows_checked(arr, slice(s, e), where), dtype=np.float32)
                except StoreError as err:  # DuckDB would wrap it in its own error with a traceback
                    self._reader_error = err
                    raise
                flat = pa.array(vals.reshape(-1), type=pa.float32())
                yield pa.record_batch([committed["row"].slice(s, e - s).combine_chunks(),
                                       committed["prompt_id"].slice(s, e - s).combine_chunks(),
                                       pa.FixedSizeListArray.from_arrays(flat, d)], schema=schema)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _register_activations(self, sql: str) -> None:
        for m in ACT_NAME.finditer(sql):
            n, layer = m.group(1), int(m.group(2))
            if n is None:
                if len(self.groups) != 1:
                    listing = "; ".join(f"act_{i}_L{layer} = {g.path}" for i, g in enumerate(self.groups))
                    raise QueryError(f"{m.group(0)} is ambiguous: the store holds {len(self.groups)} groups ({listing})")
                key = self.groups[0]
            else:
                if int(n) >= len(self.groups):
                    raise QueryError(f"{m.group(0)}: there is no group {n}; see SELECT * FROM groups")
                key = self.groups[int(n)]
            # a reader is consumed by one scan, so each statement gets a fresh one
            self.con.register(m.group(0), self.activation_reader(key, layer))

    # -- running -------------------------------------------------------------------------------
    def check(self, sql: str) -> None:
        """Refuse anything but read-only statements, before running any of them."""
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryError(str(e)) from None
        if not statements:
            raise QueryError("empty query")
        for st in statements:
            kind = st.type.name
            if kind not in READ_ONLY_TYPES:
                raise QueryError(f"{kind} statements are refused: queries are read-only (SELECT, WITH, EXPLAIN, "
                                 "DESCRIBE, SHOW); the store changes only through traitlens commands")

    def query(self, sql: str, params: list[Any] | None = None, timeout: float | None = None) -> pa.Table:
        """Run read-only SQL; returns the last statement's result as Arrow. ``timeout``: seconds
        after which the statement is stopped (a :class:`QueryError` saying so). Ctrl-C or SIGTERM
        stops a running statement at once and raises ``KeyboardInterrupt`` (``Terminated``):
        DuckDB runs outside the interpreter, so Python's own handlers would wait for it to end."""
        self.check(sql)
        self._reader_error = None
        self._register_activations(sql)
        stopped_by: list[str] = []
        with _interrupt_on(self.con, stopped_by, timeout):
            try:
                statements = self.con.extract_statements(sql)
                for st in statements[:-1]:
                    self.con.execute(st).fetchall()  # DuckDB refuses more work on an unfinished result
                rel = self.con.sql(statements[-1].query, params=params or None)
                return rel.to_arrow_table() if rel is not None else pa.table({})
            except duckdb.PermissionException as e:
                raise QueryError(f"{e}. Queries may read only this store's tables") from None
            except (duckdb.Error, RuntimeError) as e:  # DuckDB 2 reports an interrupt as RuntimeError
                if stopped_by:
                    _raise_stopped(stopped_by[0], timeout)
                if self._reader_error is not None:  # an activation stream hit damage: say that, in one line
                    raise self._reader_error from None
                if isinstance(e, duckdb.IOException) and any(w in str(e) for w in ("No such file", "No files found")):
                    raise QueryError(f"{str(e).splitlines()[0]}: a compaction replaced this table's files after "
                                     "this connection listed them (and their grace ran out); run the query again")\
                        from None
                if isinstance(e, duckdb.Error):
                    raise QueryError(str(e)) from None
                raise

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> StoreSQL:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


@contextmanager
def _interrupt_on(con: duckdb.DuckDBPyConnection, stopped_by: list[str], timeout: float | None) -> Iterator[None]:
    """While a statement runs: a timer, Ctrl-C and SIGTERM each interrupt DuckDB, and say which."""
    def stop(why: str) -> None:
        stopped_by.append(why)
        con.interrupt()

    timer = threading.Timer(timeout, stop, ["timeout"]) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    previous: dict[signal.Signals, Any] = {}  # signal -> the handler it had
    if threading.current_thread() is threading.main_thread():
        for sig, why in ((signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm")):
            previous[sig] = signal.signal(sig, lambda *_a, why=why: stop(why))
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_stopped(why: str, timeout: float | None) -> NoReturn:
    if why == "timeout":
        raise QueryError(f"the statement ran past --timeout {timeout:g} s and was stopped; narrow it "
                         "(WHERE, LIMIT) or raise --timeout") from None
    if why == "sigterm":
        raise Terminated("query terminated (SIGTERM)") from None
    raise KeyboardInterrupt("query interrupted") from None


def select_prompt_ids(store: Store, trait: str | None, where: str) -> set[str]:
    """Prompt ids of ``trait`` (None: of any trait) that a SQL WHERE clause over ``prompts`` selects."""
    with StoreSQL(store) as q:
        if trait is None:
            t = q.query(f"SELECT DISTINCT prompt_id FROM prompts WHERE {where}")
        else:
            t = q.query(f"SELECT DISTINCT prompt_id FROM prompts WHERE trait = ? AND ({where})", [trait])
    return set(t["prompt_id"].to_pylist())


def activations(store: Store | str | Path, layer: int, where: str | None = None, key: GroupKey | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """Activations ``[n, d]`` float32 and their prompt ids for the rows a WHERE over ``prompts``
    (joined on prompt_id) selects; ``key`` defaults to the store's only group."""
    store = store if isinstance(store, Store) else Store.open(store)
    with StoreSQL(store) as q:
        if key is None:
            if len(q.groups) != 1:
                raise QueryError(f"the store holds {len(q.groups)} groups; pass key= (see Store.groups())")
            key = q.groups[0]
        cond = f"WHERE prompt_id IN (SELECT prompt_id FROM prompts WHERE {where})" if where else ""
        n = q.groups.index(key)
        rows = q.query(f"SELECT row, prompt_id FROM rows WHERE model_key = ? AND fmt = ? AND site = ? AND pooling = ? "
                       f"AND prompt_id IN (SELECT prompt_id FROM act_{n}_L{int(layer)} {cond}) ORDER BY row",
                       [key.model_key, key.fmt, key.site, key.pooling])
    idx = np.asarray(rows["row"].to_pylist(), dtype=np.int64)
    arr = store.layer_array(key, layer)
    X = read_rows_checked(arr, idx).astype(np.float32, copy=False) if len(idx) else np.zeros((0, arr.shape[1]), np.float32)
    return X, rows["prompt_id"].to_pylist()
