"""The activation store: Zarr layer arrays plus Parquet prompts/rows/runs tables.

Commit protocol (what makes a crash lose nothing committed):

1. prompts are added to the ``prompts`` table before capture (one atomic part);
2. a commit writes every layer array of every group first, at rows ``[n, n + b)``;
3. then one ``rows`` part records those b prompts for all groups at once, atomically.

4. then each group's ``committed`` attribute (its high-water mark) is raised to match.

A prompt counts as stored only once step 3 lands. Rows an array holds past the larger of the
rows table's count and the high-water mark are an uncommitted tail: the next commit
overwrites them and ``verify --repair`` drops them. Rows below the mark that the rows table
lacks were committed by a part that has since been lost: nothing overwrites them, and
``verify --repair`` moves them to the quarantine.

A group's layers are fixed when it is created (its ``layers`` attribute): every committed
prompt has a row in every one of them, and a writer asked for another set refuses before
anything is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from . import arrays, tables
from .layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    TABLES_DIR,
    ZARR_DIR,
    GroupKey,
    StoreError,
    format_layer_list,
    layer_name,
    parse_layer_name,
)
from .location import StorePath, make_folder, store_path, write_atomically
from .idset import IdSet
from .errors import EXIT_INPUT
from .lock import holds_lock, write_lock
from .compaction import Compacted
from .table import Table
from .vocabulary import TABLE_NAMES
from .runs import Run, mark_killed, run_record
from .runs import code_version as code_version, new_run_id as new_run_id, now_utc as now_utc  # (re-exported: callers import them here)


class Store:
    """A traitlens store rooted at a folder or an fsspec URL. ``Store.open(path, create=True)`` makes one."""

    def __init__(self, root: str | StorePath) -> None:
        self.root = store_path(root)
        self.zarr_path = self.root / ZARR_DIR
        self.tables_path = self.root / TABLES_DIR
        self.tables = {name: Table(self.root, name) for name in TABLE_NAMES}  # the one way to a table's files

    # -- opening ---------------------------------------------------------------------------
    @staticmethod
    def exists(root: str | StorePath) -> bool:
        """True when ``root`` holds a store (its ``store.json``); reads only."""
        return (store_path(root) / "store.json").exists()

    @classmethod
    def open(cls, root: str | StorePath, create: bool = False) -> "Store":
        """Open a store, checking its format; ``create=True`` makes a new one if absent."""
        path = store_path(root)
        meta_path = path / "store.json"
        if not meta_path.exists():
            if not create:
                raise StoreError(f"no traitlens store at {path}: run `traitlens ingest` first, or pass --store")
            if path.exists() and any(p.name != ".lock" for p in path.iterdir()):
                raise StoreError(
                    f"{path} exists and is not empty but has no store.json: refusing to turn it into a store; "
                    "pass an empty or new folder to --store"
                )
            path.mkdir(parents=True, exist_ok=True)
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created_at": now_utc().isoformat(),
                    "dtype_policy": "float16, float32 for a layer that overflows"}
            data = json.dumps(meta, indent=2).encode()
            write_atomically(meta_path, lambda f: f.write(data))
            for name in TABLE_NAMES:  # (where folders exist by themselves; otherwise a part's key makes its own)
                make_folder(path / TABLES_DIR / name)
            arrays.open_root(path / ZARR_DIR, mode="a")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise StoreError(f"{meta_path} is not valid JSON ({e}); restore it from a backup") from None
        if meta.get("format") != FORMAT_NAME:
            raise StoreError(f"{meta_path}: format {meta.get('format')!r} is not a traitlens store")
        if meta.get("version") not in READABLE_VERSIONS:
            raise StoreError(
                f"{meta_path}: store format version {meta.get('version')} but this traitlens "
                f"({code_version()}) reads versions {format_layer_list(READABLE_VERSIONS)}; use a matching traitlens "
                "release or ingest into a new --store"
            )
        return cls(path)

    @contextmanager
    def lock(self, what: str = "write") -> Iterator[None]:
        """Context manager holding the single-writer lock. Whoever takes it first (not again,
        re-entrantly) records the runs whose process died unrecorded as ``killed`` (:mod:`.runs`)."""
        first = not holds_lock(self.root)
        with write_lock(self.root, what):
            if first:
                mark_killed(self, what)
            yield

    # -- tables ----------------------------------------------------------------------------
    def table(self, name: str, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
        """All committed rows of a table. For ``prompts``, the newest record of each
        (prompt_id, dataset, trait): a corrected label supersedes the old one."""
        if name != "prompts":
            return self.tables[name].read(columns, filter)
        need = list(dict.fromkeys((columns or tables.PROMPTS_SCHEMA.names) + list(PROMPT_KEY) + ["added_at"]))
        t = tables.latest_prompts(self.tables[name].read(need))
        if filter is not None:
            t = t.filter(filter)
        return t.select(columns) if columns else t.select(tables.PROMPTS_SCHEMA.names)

    def prompts(self) -> pa.Table:
        return self.table("prompts")

    def runs(self) -> pa.Table:
        """One row per run: its latest status."""
        t = self.table("runs")
        if t.num_rows == 0:
            return t
        latest: dict[str, int] = {}
        for i, (rid, ended) in enumerate(zip(t["run_id"].to_pylist(), t["ended_at"].to_pylist())):
            if rid not in latest or ended is not None:
                latest[rid] = i
        return t.take(sorted(latest.values()))

    def prompt_changes(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(new, changed)``: records whose (prompt_id, dataset, trait) the store lacks, and
        records whose label or split differs from the stored one. Reads only."""
        have = self.table("prompts", columns=list(PROMPT_KEY) + ["label", "split"])
        stored = {(p, d, t): (lab, sp) for p, d, t, lab, sp in zip(*(have[c].to_pylist() for c in have.column_names))}
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for r in records:
            key = tuple(r[c] for c in PROMPT_KEY)
            if key in seen:
                continue
            seen.add(key)
            old = stored.get(key)
            if old is None:
                new.append(r)
            elif old != (r["label"], r["split"]):
                changed.append(r)
        return new, changed

    def add_prompts(self, records: list[dict[str, Any]]) -> tuple[int, int]:
        """Add prompt records (key: prompt_id, dataset, trait) in one atomic part.

        A key not yet stored is added; a stored key whose label or split differs gets a newer
        record that supersedes the old (the vectors fitted on it become stale: their row
        fingerprint changes). Returns ``(added, relabelled)``."""
        if not records:
            return 0, 0
        new, changed = self.prompt_changes(records)
        self.write_prompts(new, changed)
        return len(new), len(changed)

    def write_prompts(self, new: list[dict[str, Any]], changed: list[dict[str, Any]]) -> None:
        """Append prompt records in one atomic part: ``new`` keys keep their ``added_at`` (if
        any), ``changed`` ones (a corrected label or split) are stamped now, so they win."""
        if new or changed:
            stamp = now_utc()
            rows = [{**r, "added_at": r.get("added_at") or stamp} for r in new] + [{**r, "added_at": stamp} for r in changed]
            self.append("prompts", rows)

    def append(self, table: str, rows: list[dict[str, Any]]) -> StorePath | None:
        """Add ``rows`` (dicts; missing fields are null) to a table as one atomic part; returns the
        part's path, None when there is nothing to add. The one way callers write table rows
        (:meth:`.Table.append`: small parts are merged once enough have piled up)."""
        return self.tables[table].append(rows)

    def compact(self, names: Iterable[str] | None = None, full: bool = True, grace: float | None = None,
                log: Callable[[Compacted], object] | None = None) -> list[Compacted]:
        """Merge the tables' parts now (all, or ``names``; see :mod:`.compaction`), taking the
        writer lock; returns what each compaction did. ``log`` hears each as it ends."""
        done = []
        with self.lock("compact"):
            for name in names or TABLE_NAMES:
                c = self.tables[name].compact(full=full, grace=grace)
                if c is not None:
                    done.append(c)
                    if log is not None:
                        log(c)
        return done

    def record_run(self, run: dict[str, Any]) -> None:
        """Append a run record (a later record of the same run_id supersedes it)."""
        self.append("runs", [run])

    def run(self, stage: str, config: dict[str, Any], run_id: str | None = None, lock: bool = False,
            start: bool = True) -> AbstractContextManager[Run]:
        """Context manager recording a stage's run from start to its end (see :mod:`.runs`)."""
        return run_record(self, stage, config, run_id, lock, start)

    # -- groups and arrays -----------------------------------------------------------------
    def groups(self) -> list[GroupKey]:
        """Every group with at least one committed row."""
        return list(self.group_counts())

    def group_counts(self) -> dict[GroupKey, int]:
        """Committed prompts per group, from one aggregate over the rows table (no per-prompt work)."""
        t = self.table("rows", columns=["model_key", "fmt", "site", "pooling"])
        if t.num_rows == 0:
            return {}
        agg = t.group_by(["model_key", "fmt", "site", "pooling"]).aggregate([([], "count_all")])
        return dict(sorted((GroupKey(r["model_key"], r["fmt"], r["site"], r["pooling"]), r["count_all"])
                           for r in agg.to_pylist()))

    def group_rows(self, key: GroupKey, columns: list[str] | None = None) -> pa.Table:
        """Committed rows of one group, sorted by row (``columns``: only these, ``row`` among them)."""
        f = ((pc.field("model_key") == key.model_key) & (pc.field("fmt") == key.fmt)
             & (pc.field("site") == key.site) & (pc.field("pooling") == key.pooling))
        return by_row(self.table("rows", columns=columns, filter=f))

    def committed(self, key: GroupKey, ids: bool = True) -> "GroupState":
        """How far a group is committed: prompts, rows and array rows (``ids``: and the committed
        prompt ids; without them, which a caller that needs only the counts skips reading, the
        state's :attr:`~GroupState.ids` is None)."""
        t = self.group_rows(key, ["row", "token_start", "token_count"] + (["prompt_id"] if ids else []))
        n = t.num_rows
        rows_end = int(pc.max(t["row"]).as_py()) + 1 if n else 0
        if key.pooling == "tokens" and n:
            array_rows = int(pc.max(pc.add(t["token_start"], pc.cast(t["token_count"], pa.int64()))).as_py())
        else:
            array_rows = rows_end  # past the highest committed row, even where a lost part left a gap below it
        return GroupState(n_prompts=n, array_rows=array_rows, ids=t["prompt_id"] if ids else None, rows_end=rows_end)

    def zarr_root(self, mode: arrays.Mode = "r") -> zarr.Group:
        return arrays.open_root(self.zarr_path, mode=mode)

    def layers(self, key: GroupKey) -> list[int]:
        """Layers stored for a group, ascending."""
        group = arrays.get_group(self.zarr_root(), key.path)
        if group is None:
            return []
        return array_layers(group)

    def check_extend(self, groups: list[GroupKey], layers: Layers, d_model: int, ids: bool = True
                     ) -> dict[GroupKey, "GroupState"]:
        """Refuse, before anything is written, a capture that would break a group's invariants;
        returns each group's committed state (``ids=False``: without the prompt ids, see
        :meth:`committed`; the refusals need only the counts).

        ``layers``: one list for every group, or ``{site: list}``. A group that holds committed
        rows keeps its layer set (a capture of other layers would leave short arrays or rows
        of zeros), its width, and arrays at least as long as its commits. Reads only."""
        root = self.zarr_root() if self.zarr_path.exists() else None
        states = {}
        for g in groups:
            want = sorted(layers[g.site] if isinstance(layers, dict) else layers)
            grp = arrays.get_group(root, g.path) if root is not None else None
            st = states[g] = self.committed(g, ids)
            mark = committed_mark(grp)
            if st.has_gap:
                raise StoreError(
                    f"{g.path}: row numbers have a gap ({st.n_prompts} rows recorded up to row {st.rows_end - 1}): a "
                    "rows part from the middle was lost; run `traitlens verify --repair` (it moves the rows after the "
                    "gap to quarantine/), then rerun this command to capture them again")
            if mark is not None and mark["prompts"] > st.n_prompts:
                raise StoreError(
                    f"{g.path}: {mark['prompts'] - st.n_prompts} committed rows are missing from the rows table "
                    "(a rows part was lost or damaged); run `traitlens verify --repair` to move their activations "
                    "to quarantine/, then rerun this command to capture them again")
            if not st.n_prompts:
                if grp is not None and mark is None and any(
                        (a := arrays.get_array(grp, layer_name(l), g.path)) is not None and a.shape[0]
                        for l in array_layers(grp)):
                    raise StoreError(f"{g.path} holds activations that no rows part records and no commit mark "
                                     "vouches for; run `traitlens verify --repair` (it moves them to quarantine/)")
                continue
            if grp is None:
                raise StoreError(f"{g.path}: {st.n_prompts} prompts are committed but its arrays are gone; "
                                 "run `traitlens verify` (re-ingest into a new --store to rebuild)")
            fixed = fixed_layers(grp)
            if fixed != want:
                raise StoreError(
                    f"{g.path} holds layers {format_layer_list(fixed)} for {st.n_prompts} committed prompts; this "
                    f"capture asks for layers {format_layer_list(want)}. A group's layers are fixed once it holds "
                    f"data: rerun with --layers {format_layer_list(fixed)}, or capture into another --store")
            for l in fixed:
                arr = arrays.get_array(grp, layer_name(l), g.path)
                if arr is None or arr.shape[0] < st.array_rows:
                    have = "is missing" if arr is None else f"holds {arr.shape[0]} rows"
                    raise StoreError(f"{g.path}/{layer_name(l)} {have} but {st.array_rows} are committed: the "
                                     "store is damaged; run `traitlens verify` before writing more")
                if arr.ndim == 2 and arr.shape[1] != d_model:
                    raise StoreError(f"{g.path}/{layer_name(l)} has d={arr.shape[1]} but the model gives "
                                     f"d={d_model}: is this the same model?")
        return states

    def check_intact(self, key: GroupKey, rows: pa.Array | pa.ChunkedArray | None = None) -> None:
        """Refuse (:class:`StoreDamaged`) to read a group that ``verify`` would call damaged in a
        way that makes a reader use the wrong rows: row numbers with a gap (a rows part from the
        middle lost), rows the commit mark vouches for without a record (a part lost at the end),
        a layer array of its fixed set missing. Cheap: the group's ``row`` column (``rows``, if the
        caller has read it already), its attributes and a listing; no chunk is read."""
        rows = self.group_rows(key, ["row"])["row"] if rows is None else rows
        n = len(rows)
        end = int(pc.max(rows).as_py()) + 1 if n else 0
        fix = "run `traitlens verify`, then `traitlens verify --repair`, and rerun the ingest to capture what was lost"
        if end != n:
            raise StoreDamaged(f"{key.path}: row numbers have a gap ({n} rows recorded up to row {end - 1}): a rows "
                               f"part from the middle was lost, so this would use a subset of the prompts; {fix}")
        grp = arrays.get_group(self.zarr_root(), key.path) if self.zarr_path.exists() else None
        if grp is None:
            if n:
                raise StoreDamaged(f"{key.path}: {n} prompts are committed but its arrays are gone; run `traitlens "
                                   "verify` (re-ingest into a new --store to rebuild)")
            return
        mark = committed_mark(grp)
        if mark is not None and mark["prompts"] > n:
            raise StoreDamaged(f"{key.path}: {mark['prompts'] - n} committed rows have no rows record (a rows part "
                               f"was lost or damaged), so this would use a subset of the prompts; {fix}")
        missing = sorted(set(fixed_layers(grp)) - set(array_layers(grp)))
        if missing and n:
            raise StoreDamaged(f"{key.path}/{layer_name(missing[0])}: the layer array is missing"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} with its {n} "
                               "committed rows; run `traitlens verify` (re-ingest into a new --store to rebuild)")

    def activations(self, key: GroupKey | None, layer: int, rows: slice | None = None) -> np.ndarray:
        """Committed activations of one layer as float32 ``[n_rows, d]`` (array rows).

        ``key=None`` means the store's only group. Rows chosen by a SQL condition over the
        ``prompts`` columns come from :func:`traitlens.queries.activations`.
        """
        if key is None:
            groups = self.groups()
            if len(groups) != 1:
                raise StoreError(f"the store holds {len(groups)} groups; pass one of {[g.path for g in groups]}")
            key = groups[0]
        n = self.committed(key).array_rows
        arr = self.layer_array(key, layer, n)
        sel = slice(0, n) if rows is None else slice(*rows.indices(n))
        return arrays.read_rows_checked(arr, sel, f"{key.path}/{layer_name(layer)}").astype(np.float32, copy=False)

    def layer_array(self, key: GroupKey, layer: int, n_rows: int | None = None) -> zarr.Array[Any]:
        """One layer's array, checked before it serves its committed rows (``n_rows``, default
        the group's): a missing array, short array or missing chunk is a ``StoreError``."""
        group = arrays.get_group(self.zarr_root(), key.path)
        if group is None or layer not in array_layers(group):
            raise StoreError(f"layer {layer} is not stored for {key.path}; stored layers: "
                             f"{format_layer_list(self.layers(key)) or 'none'}")
        n = self.committed(key).array_rows if n_rows is None else n_rows
        return arrays.checked_layer(group, layer_name(layer), n, key.path)

    def writer(self, groups: list[GroupKey], layers: Layers, d_model: int, run_id: str,
               chunk_rows: int = 256) -> "CommitWriter":
        return CommitWriter(self, groups, layers, d_model, run_id, chunk_rows)


class StoreDamaged(StoreError):
    """A reader refuses a store that ``verify`` would call damaged (exit 2: nothing was
    attempted; ``verify --repair`` and a re-ingest make it usable again)."""

    exit_code = EXIT_INPUT


LAYERS_ATTR = "layers"  # a group's fixed layer set, written when the group is created
COMMITTED_ATTR = "committed"  # {"prompts": n, "array_rows": m}: the high-water mark of the group's commits
PROMPT_KEY = ("prompt_id", "dataset", "trait")
Layers = Sequence[int] | Mapping[str, Sequence[int]]  # one layer list for every group, or one per site


def by_row(t: pa.Table) -> pa.Table:
    """Rows of one group in row order (already so when its parts were written in order: then no copy)."""
    rows = t["row"].to_numpy() if t.num_rows else None
    return t if rows is None or bool(np.all(rows[1:] > rows[:-1])) else t.sort_by("row")


def array_layers(group: zarr.Group) -> list[int]:
    """Layers that have an array in ``group``, ascending (from a listing: metadata not parsed)."""
    return sorted(l for l in (parse_layer_name(n) for n in arrays.member_names(group)) if l is not None)


def fixed_layers(group: zarr.Group) -> list[int]:
    """The group's layer set: its ``layers`` attribute (stores made before it existed: the arrays present)."""
    want: Any = dict(group.attrs).get(LAYERS_ATTR)  # JSON: a list of layers
    return sorted(int(l) for l in want) if want is not None else array_layers(group)


def committed_mark(group: zarr.Group | None) -> dict[str, int] | None:
    """The group's high-water mark, or None where no writer of this version has recorded one."""
    if group is None:
        return None
    mark: Any = dict(group.attrs).get(COMMITTED_ATTR)  # JSON: {"prompts": n, "array_rows": m}
    return {"prompts": int(mark["prompts"]), "array_rows": int(mark["array_rows"])} if mark else None


def committed_everywhere(states: Mapping[GroupKey, GroupState]) -> set[str]:
    """Prompt ids committed in every group of ``{group: GroupState}`` (none when there is no group)."""
    sets = [st.prompt_ids.to_set() for st in states.values()]
    return set.intersection(*sets) if sets else set()


@dataclass
class GroupState:
    n_prompts: int
    array_rows: int
    ids: pa.Array | pa.ChunkedArray | None = field(default=None, repr=False)  # the committed prompt ids, as read
    rows_end: int = 0  # highest committed row + 1; above n_prompts only where a lost part left a gap
    _prompt_ids: IdSet | None = field(default=None, repr=False)

    @property
    def prompt_ids(self) -> IdSet:
        """The committed ids as an :class:`IdSet` (compact: bytes per id, not an object), sorted
        when first asked for: the checks that need only the counts (``check_extend`` of a
        1M-prompt group) skip the sort."""
        if self._prompt_ids is None:
            if self.ids is None and self.n_prompts:  # a state read for its counts only (committed(ids=False))
                raise ValueError("this group state was read without its prompt ids: use committed(key)")
            self._prompt_ids = IdSet(self.ids if self.ids is not None else ())
        return self._prompt_ids

    @property
    def has_gap(self) -> bool:
        return self.rows_end != self.n_prompts


@dataclass
class PendingBatch:
    """Captured results of some prompts, waiting for a commit.

    ``pooled[(site, pooling)][layer]`` is float32 ``[B, d]``; for ``tokens`` pooling it is
    ``[sum(token_counts), d]`` and ``token_ids`` holds the matching int32 ids.
    """

    prompt_ids: list[str]
    token_counts: npt.NDArray[np.int32]  # [B]
    truncated: npt.NDArray[np.int32]  # [B]
    responses: list[str | None]
    pooled: dict[tuple[str, str], dict[int, npt.NDArray[np.float32]]]
    token_ids: npt.NDArray[np.int32] | None = None  # [sum(token_counts)]
    written: bool = False  # its rows are already in the arrays (a worker wrote them; ``pooled`` is empty)

    def nbytes(self) -> int:
        """What this batch weighs in transit: its arrays and strings (what a Dask worker sends back)."""
        arrays_ = [self.token_counts, self.truncated, self.token_ids] + [
            v for per in self.pooled.values() for v in per.values()]
        return (sum(a.nbytes for a in arrays_ if a is not None) + sum(len(p) for p in self.prompt_ids)
                + sum(len(r) for r in self.responses if r))


class CommitWriter:
    """Buffers captured batches and commits them: arrays first, then one atomic rows part.

    Commits land on chunk boundaries of the pooled arrays (the first commit after a resume
    fills the partial chunk), so steady-state writes never rewrite a chunk.
    """

    def __init__(self, store: Store, groups: list[GroupKey], layers: Layers, d_model: int, run_id: str,
                 chunk_rows: int = 256) -> None:
        groups = list(dict.fromkeys(groups))  # a group listed twice would commit every row twice
        self.state = store.check_extend(groups, layers, d_model)
        self.store, self.groups, self.d = store, groups, d_model
        self.layers_of = {g: sorted(layers[g.site] if isinstance(layers, dict) else layers) for g in groups}
        self.run_id, self.chunk_rows = run_id, chunk_rows
        self.root = store.zarr_root(mode="a")
        self.arrays: dict[tuple[GroupKey, int], zarr.Array[Any]] = {}
        self.token_id_arrays: dict[GroupKey, zarr.Array[Any]] = {}
        self.pending: list[PendingBatch] = []
        self.n_pending = 0
        self.n_committed = 0
        self.promoted: list[str] = []
        self.last_commit = time.monotonic()
        self.broken: BaseException | None = None  # after a failed commit nothing more is written
        self.reserved_end: int | None = None  # rows handed to workers up to here (see reserve)
        for g in groups:
            grp = arrays.require_group(self.root, g.path)
            if not self.state[g].n_prompts:  # a new group: its layer set is this writer's
                for l in array_layers(grp):  # arrays without a commit hold tails only (check_extend made sure)
                    if l not in self.layers_of[g]:
                        del grp[layer_name(l)]
                grp.attrs.update({LAYERS_ATTR: self.layers_of[g], COMMITTED_ATTR: {"prompts": 0, "array_rows": 0}})
            for layer in self.layers_of[g]:
                name = layer_name(layer)
                arr = arrays.get_array(grp, name, g.path)
                if arr is None:
                    arr = arrays.create_layer_array(grp, name, d_model, "float16", chunk_rows)
                if arr.shape[1] != d_model:
                    raise StoreError(f"{g.path}/{name} has d={arr.shape[1]} but the model gives d={d_model}")
                self.arrays[(g, layer)] = arr
            if g.pooling == "tokens":
                ids = arrays.get_array(grp, "token_ids", g.path)
                self.token_id_arrays[g] = (ids if ids is not None else
                                           grp.create_array("token_ids", shape=(0,), chunks=(chunk_rows * 16,),
                                                            dtype="int32", fill_value=0))

    # -- rows that workers write themselves ------------------------------------------------
    def can_delegate(self) -> bool:
        """Whether Dask workers may write this writer's arrays themselves: pooled groups only (a
        tokens group's rows per prompt are only known after capture) that all stand at the same
        row, with nothing buffered here."""
        return (all(g.pooling != "tokens" for g in self.groups) and not self.pending
                and len({self.state[g].n_prompts for g in self.groups}) == 1)

    @property
    def next_row(self) -> int:
        """The row the next commit records (every group's, when delegating)."""
        return self.state[self.groups[0]].n_prompts

    def next_range(self) -> int:
        """Prompts in the next range to hand out: up to the next chunk boundary, so that no two
        ranges (no two writers) ever share a chunk."""
        end = self.next_row if self.reserved_end is None else self.reserved_end
        return self.chunk_rows - end % self.chunk_rows

    def reserve(self, n: int) -> int:
        """Hand out the next ``n`` rows of every group to a worker; returns the first. The arrays
        grow ahead of the workers (one metadata write per 64 chunks), so a worker only writes
        chunks, never an array's metadata."""
        self._check_usable()
        start = self.next_row if self.reserved_end is None else self.reserved_end
        self.reserved_end = start + n
        for arr in self.arrays.values():
            if arr.shape[0] < self.reserved_end:
                arr.resize((max(self.reserved_end, arr.shape[0] + 64 * self.chunk_rows),) + tuple(arr.shape[1:]))
        return start

    def end_delegation(self) -> None:
        """After the last range: trim the arrays' reserved growth back to the committed rows."""
        if self.reserved_end is None:
            return
        for (g, _), arr in self.arrays.items():
            arrays.truncate_rows(arr, self.state[g].array_rows)
        self.reserved_end = None

    def commit_delegated(self, start: int, batch: PendingBatch) -> int:
        """Record the range at ``start``: its rows part, then the marks. Ranges are committed in
        order. A ``batch.written`` range is in the arrays already; otherwise (a worker met a
        value past float16 and wrote nothing) this writer writes it, after the caller has let
        every worker finish (a promotion to float32 rewrites the whole array)."""
        self._check_usable()
        if start != self.next_row:
            raise StoreError(f"range at row {start} committed out of order (next is {self.next_row})")
        try:
            return self._commit_batches([batch], written=batch.written)
        except BaseException as e:
            self.broken = e
            raise

    def done_prompt_ids(self) -> set[str]:
        """Prompts committed in every group this writer covers (the rest still need capture)."""
        return committed_everywhere(self.state)

    def add(self, batch: PendingBatch, max_seconds: float = 60.0) -> int:
        """Buffer a batch; commit when the pooled rows reach a chunk boundary or time passes.

        Returns the number of prompts committed by this call (0 if it only buffered).
        """
        self._check_usable()
        self.pending.append(batch)
        self.n_pending += len(batch.prompt_ids)
        base = min(self.state[g].n_prompts for g in self.groups)
        to_boundary = self.chunk_rows - (base % self.chunk_rows)
        if self.n_pending >= to_boundary or time.monotonic() - self.last_commit > max_seconds:
            return self.commit()
        return 0

    def commit(self) -> int:
        """Write buffered batches to every array, then record them in one rows part."""
        self._check_usable()
        if not self.pending:
            return 0
        try:
            return self._commit()
        except BaseException as e:
            self.broken = e
            raise

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise StoreError(f"an earlier commit failed ({type(self.broken).__name__}: {self.broken}); "
                             "nothing more is written by this run") from self.broken

    def _commit(self) -> int:
        batches, self.pending = self.pending, []
        self.n_pending = 0
        return self._commit_batches(batches)

    def _commit_batches(self, batches: list[PendingBatch], written: bool = False) -> int:
        n = sum(len(b.prompt_ids) for b in batches)
        prompt_ids = [p for b in batches for p in b.prompt_ids]
        counts = np.concatenate([b.token_counts for b in batches]).astype(np.int64)
        truncated = np.concatenate([b.truncated for b in batches])
        responses = [r for b in batches for r in b.responses]
        stamp = now_utc()
        offs = np.concatenate([[0], np.cumsum(counts)])  # token offsets of each prompt in the batches
        records: list[dict[str, Any]] = []
        per_group: dict[GroupKey, list[dict[str, Any]]] = {}
        for g in self.groups:
            st = self.state[g]
            fresh: set[str] = set()
            keep: list[int] = []
            for i, p in enumerate(prompt_ids):  # skip what is stored, and repeats within this commit
                if p not in st.prompt_ids and p not in fresh:
                    fresh.add(p)
                    keep.append(i)
            if not keep:
                continue
            everything = len(keep) == len(prompt_ids)
            if written and not everything:
                raise StoreError(f"{g.path}: a worker wrote rows for prompts this group already holds; nothing of "
                                 "that range is recorded (its rows are an uncommitted tail)")
            start = st.array_rows
            for layer in ([] if written else self.layers_of[g]):
                values = np.concatenate([b.pooled[(g.site, g.pooling)][layer] for b in batches])
                if not everything:
                    values = (np.concatenate([values[offs[i]:offs[i + 1]] for i in keep]) if g.pooling == "tokens"
                              else values[keep])
                self._write(g, layer, start, values)
            if g.pooling == "tokens":
                ids = np.concatenate([b.token_ids for b in batches])
                ids = ids if everything else np.concatenate([ids[offs[i]:offs[i + 1]] for i in keep])
                arrays.write_rows(self.token_id_arrays[g], start, ids)
            token_start = start
            mine: list[dict[str, Any]] = []
            for j, i in enumerate(keep):
                mine.append({**g.as_dict(), "row": st.n_prompts + j, "prompt_id": prompt_ids[i],
                             "token_start": token_start if g.pooling == "tokens" else None,
                             "token_count": int(counts[i]), "truncated": int(truncated[i]),
                             "response": responses[i] if g.pooling == "response_mean" else None,
                             "run_id": self.run_id, "committed_at": stamp})
                token_start += int(counts[i])
            records += mine
            per_group[g] = mine
        self.store.append("rows", records)
        # only now, with the rows part on disk, do these prompts count as stored
        for g, mine in per_group.items():
            st = self.state[g]
            st.n_prompts += len(mine)
            st.array_rows += sum(r["token_count"] for r in mine) if g.pooling == "tokens" else len(mine)
            st.prompt_ids.add_all(r["prompt_id"] for r in mine)
            # the mark lets verify tell a crash's tail (above it) from rows whose part was lost (below it)
            arrays.require_group(self.root, g.path).attrs.update(
                {COMMITTED_ATTR: {"prompts": st.n_prompts, "array_rows": st.array_rows}})
        self.n_committed += n
        self.last_commit = time.monotonic()
        return n

    def _write(self, g: GroupKey, layer: int, start: int, values: npt.NDArray[np.float32]) -> None:
        arr = self.arrays[(g, layer)]
        # rows workers hold reservations for are kept (by a promotion and by the write)
        keep = max(self.state[g].array_rows, self.reserved_end or 0)
        if arr.dtype == np.float16 and arrays.needs_float32(values):
            grp = arrays.require_group(self.root, g.path)
            arr = arrays.promote_to_float32(grp, self.store.zarr_path / g.path, layer_name(layer), keep,
                                            self.chunk_rows)
            self.arrays[(g, layer)] = arr
            self.promoted.append(f"{g.path}/{layer_name(layer)}")
        arrays.write_rows(arr, start, values, shrink=self.reserved_end is None)
