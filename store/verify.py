"""Check every invariant of a store against the data itself, and repair what a crash leaves.

What is checked (every finding is one line naming the file or array, never a traceback):
- tables: every live part of every table parses (the footer; with values, every page and its
  CRC); each compaction manifest reads, every compacted part it lists exists with the row count
  it recorded, and no compaction was left half done (an orphan base, retired parts past their
  grace);
- prompts: no (prompt_id, dataset, trait) recorded twice at the same time;
- per group (model_key, fmt, site, pooling): rows numbered 0..n-1, no prompt twice, no row
  whose prompt is missing; token ranges contiguous (tokens pooling);
- per group's arrays: its metadata reads; every layer of its fixed layer set has an array, of
  one width d, at least as long as its commits; every chunk of a committed row exists (a
  missing chunk reads as zeros); with values, every such chunk decodes and holds finite values;
- commit marks: rows a group's high-water mark vouches for but no rows part records (a part
  was lost) are reported, never taken for a crash's tail;
- leftovers: temporary parts and chunks, interrupted float32 promotions;
- vectors: every stored vector's values are finite and not all zero.

``repair=True`` deletes only what it can prove uncommitted — a tail above the high-water mark,
temporaries — and moves everything else it must take out of the way (damaged parts, rows whose
part was lost, tails of stores written before marks existed) to ``quarantine/`` (see
:mod:`.quarantine`). Nothing committed is ever changed in place; what it cannot fix (an array
shorter than its commits, missing chunks, non-finite values) stays an error for a human.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from . import arrays, compaction, manifest, tables
from .location import StorePath, as_local, capabilities, relative, remove_tree
from .layout import GroupKey, StoreError, format_layer_list, layer_name
from .quarantine import Quarantine
from .store import COMMITTED_ATTR, Store, array_layers, by_row, committed_mark, fixed_layers
from .vocabulary import TABLE_NAMES


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)  # committed data is wrong: needs a human or --repair
    tails: list[str] = field(default_factory=list)  # uncommitted leftovers: --repair removes them
    repaired: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # what --repair moved aside (see quarantine/)
    notes: list[str] = field(default_factory=list)  # harmless, said for the record (the store is clean)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.errors and not self.tails


def leftovers(store: Store) -> tuple[list[StorePath], list[StorePath]]:
    """``(temporary files, folders of interrupted float32 promotions)`` that dead writers left:
    temporaries of parts and of ``store.json``, and under ``activations.zarr`` (from one walk of
    the tree, which holds a folder per chunk row) temporary chunks and promotion folders."""
    found: list[StorePath] = list(store.tables_path.rglob(".tmp-*")) if store.tables_path.exists() else []
    found += list(store.root.glob(".tmp-*"))  # a store.json rewrite (format upgrade) cut short
    if not store.zarr_path.exists():
        return found, []
    if capabilities(store.zarr_path).local_files:
        folders: list[StorePath] = []
        for top, dirs, files in os.walk(as_local(store.zarr_path)):
            found += [Path(top) / f for f in files if f.endswith(".partial")]
            folders += [Path(top) / d for d in dirs if d.endswith((".old", ".f32tmp"))]
    else:
        found += list(store.zarr_path.rglob("*.partial"))
        folders = [p for pat in ("*.old", "*.f32tmp") for p in store.zarr_path.rglob(pat)]
    # promotions rename whole array folders: match names first (cheap on object stores), then folders
    return found, sorted(p for p in set(folders) if (p / "zarr.json").exists())


def clean_temporaries(store: Store, found: tuple[list[StorePath], list[StorePath]] | None = None) -> list[str]:
    """Remove what dead writers left (temporary parts and chunks, half-done promotions);
    ``found``: what :func:`leftovers` already listed.

    Call only while holding the store's writer lock: a live writer's temporaries look alike.
    """
    done = []
    temporaries, promotions = found if found is not None else leftovers(store)
    for p in promotions:
        done += arrays.restore_interrupted_promotions(p.parent)
    for p in temporaries:
        p.unlink(missing_ok=True)
        done.append(str(p))
    return done


class _Verifier:
    def __init__(self, store: Store, repair: bool, check_values: bool, progress: Callable[[], object] | None) -> None:
        self.store, self.repair, self.values, self.progress = store, repair, check_values, progress
        self.rep = Report()
        self.quarantine = Quarantine(store.root)  # written to (by --repair) only when something is moved there
        self.damaged: set[str] = set()  # group paths whose metadata does not read (reported once)

    def _moved(self, what: str) -> None:
        self.rep.quarantined.append(what)

    # -- tables --------------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        """Check a table's manifest and every live part; returns the rows of the parts that read."""
        schema, table_dir = self.store.tables[name].schema, self.store.tables[name].dir
        snap = self.manifest(name, table_dir)
        if snap is None:
            return schema.empty_table()
        bad = {p: why for p in snap.live if (why := tables.part_problem(p, schema, self.values)) is not None}
        dropped = []
        for part, why in bad.items():
            rel = f"tables/{name}/{part.name}"
            if self.repair:
                dest = self.quarantine.move_part(part, name, why)
                self._moved(f"{rel}: damaged ({why}); moved to {relative(dest, self.store.root)}; "
                            "re-ingest the corpus to restore what it held")
                dropped.append(part.name)
            else:
                self.rep.errors.append(f"{rel}: damaged Parquet part ({why}); --repair moves it to quarantine/")
        good = [p for p in snap.live if p not in bad]
        if dropped:
            compaction.drop_bases(table_dir, snap.manifest, dropped)
        self.rep.checked[f"{name}_parts"] = len(good)
        return tables.read_parts(good, schema)

    def manifest(self, name: str, table_dir: StorePath) -> manifest.Snapshot | None:
        """Check a table's compaction state (see :mod:`.manifest`); returns its snapshot, None
        where it cannot be read even after repair (reported)."""
        rel = f"tables/{name}"
        try:
            snap = manifest.snapshot(table_dir)
        except StoreError as e:
            if not self.repair:
                self.rep.errors.append(str(e))
                return None
            rebuilt = manifest.rebuild(table_dir, name, compaction.footer)
            manifest.write_manifest(table_dir, rebuilt)
            self.rep.tails.append(f"{e} -> rebuilt from the footers of {len(rebuilt.bases)} compacted part(s)")
            snap = manifest.snapshot(table_dir)
        for p in snap.orphans:
            self.rep.tails.append(f"{rel}/{p.name}: output of an interrupted compaction (not in the manifest); "
                                  "--repair deletes it (the compaction is rolled back)")
            if self.repair:
                p.unlink(missing_ok=True)
                self.rep.repaired.append(f"removed {rel}/{p.name} (compaction rolled back)")
        late = snap.retired_present(manifest.retire_grace())
        if late:
            # harmless (no reader reads them): the next write to the table, or --repair, deletes them
            self.rep.notes.append(f"{rel}: {len(late)} part(s) a compaction replaced await deletion (the next write "
                                  "to the table or --repair deletes them)")
            if self.repair:
                compaction.delete_retired(table_dir, snap)
                self.rep.repaired.append(f"{rel}: deleted {len(late)} retired part(s)")
        listed = set(snap.listed)
        missing = [b for b in (snap.manifest.bases if snap.manifest else []) if b["name"] not in listed]
        for b in missing:
            msg = (f"{rel}/{b['name']}: a compacted part the manifest lists ({b['rows']} rows) is missing; its rows "
                   "are lost unless you restore the file from a backup")
            if self.repair:
                self._moved(msg + "; dropped from the manifest: re-ingest the corpus to restore what it held")
            else:
                self.rep.errors.append(msg + "; --repair drops it from the manifest")
        if missing and self.repair:
            compaction.drop_bases(table_dir, snap.manifest, [b["name"] for b in missing])
            snap = manifest.snapshot(table_dir)
        for b in snap.manifest.bases if snap.manifest else []:
            meta, rows = compaction.footer(table_dir / b["name"])
            if meta is not None and rows != b["rows"]:
                self.rep.errors.append(f"{rel}/{b['name']}: holds {rows} rows but the manifest recorded {b['rows']}: "
                                       "the file was replaced; restore it from a backup")
        return snap

    # -- arrays --------------------------------------------------------------------------------
    def zarr_groups(self, root: zarr.Group) -> dict[str, zarr.Group | None]:
        """Every group path (``model/fmt/site/pooling``) in the Zarr tree -> its group, or None
        where its metadata is damaged (reported)."""
        found: dict[str, zarr.Group | None] = {}

        def walk(group: zarr.Group, path: str, depth: int) -> None:
            for name in arrays.member_names(group):
                sub = f"{path}/{name}" if path else name
                try:
                    node = arrays.get_group(root, sub)
                except StoreError as e:
                    self.rep.errors.append(str(e))
                    self.damaged.add(sub)
                    continue
                if depth == 3:
                    found[sub] = node
                elif node is not None:
                    walk(node, sub, depth + 1)

        walk(root, "", 0)
        return found

    def group(self, key: GroupKey, grp: zarr.Group | None, t: pa.Table, prompt_ids: pa.Array) -> int:
        """Check one group's rows and arrays; returns its committed row count."""
        rep, path = self.rep, key.path
        t = by_row(t)
        n: int = t.num_rows
        rows = t["row"].to_numpy() if n else np.zeros(0, np.int64)
        contiguous = np.array_equal(rows, np.arange(n))
        if not contiguous:
            recorded = np.zeros(int(rows.max()) + 1, bool)
            recorded[rows] = True
            gaps = np.flatnonzero(~recorded)
            uniq, counts = np.unique(rows, return_counts=True)
            dups = uniq[counts > 1][:5].tolist()
            if len(gaps) and not dups and self.repair:
                t = self._cut_at_gap(key, grp, t, int(gaps[0]))
                n, rows, contiguous = t.num_rows, t["row"].to_numpy(), True
            elif len(gaps) and not dups:
                rep.errors.append(f"{path}: row numbers are not 0..{n - 1} (rows {gaps[0]}-{gaps[-1]} have no record): "
                                  "a rows part from the middle was lost. --repair moves the rows after the gap (their "
                                  "records and activations) to quarantine/, so that a re-ingest captures those prompts "
                                  "again")
            else:
                rep.errors.append(f"{path}: row numbers are not 0..{n - 1} (duplicated rows {dups}): a rows part was "
                                  "copied. The arrays are left as they are; remove the copied part (restore the "
                                  "table from a backup), or re-ingest into a new --store")
        # one hash lookup per row answers both: which prompt each row is (None: an orphan) and repeats
        idx = pc.index_in(t["prompt_id"], value_set=prompt_ids) if n else pa.array([], pa.int32())
        known = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False)
        counts = np.bincount(known[known >= 0], minlength=len(prompt_ids)) if n else np.zeros(0, np.int64)
        repeated = np.flatnonzero(counts > 1)
        if len(repeated):
            rep.errors.append(f"{path}: {len(repeated)} prompts stored more than once, e.g. "
                              f"{prompt_ids[int(repeated[0])].as_py()}")
        orphans = pc.unique(t["prompt_id"].filter(pc.is_null(idx))) if n else pa.array([], pa.string())
        if len(orphans):
            rep.errors.append(f"{path}: {len(orphans)} rows point at prompts missing from the prompts table, e.g. "
                              f"{orphans[0].as_py()}; re-ingest their corpus to restore the prompt records")
        array_rows = int(rows.max()) + 1 if n else 0  # past the highest committed row, gaps or not
        if key.pooling == "tokens" and n:
            starts, counts = t["token_start"].to_numpy(), t["token_count"].to_numpy().astype(np.int64)
            if not np.array_equal(starts, np.concatenate([[0], np.cumsum(counts)[:-1]])):
                rep.errors.append(f"{path}: token ranges are not contiguous")
            array_rows = int(counts.sum())
        if grp is None:
            if n and path not in self.damaged:
                rep.errors.append(f"{path}: {n} committed rows but no arrays on disk (activations.zarr/{path} was "
                                  "deleted?); they are lost: re-ingest into a new --store")
            return n
        mark = committed_mark(grp)
        if contiguous and mark is not None and mark["prompts"] > n:
            self._lost_commits(key, grp, n, array_rows, mark)
            mark = committed_mark(grp)
        # rows up to the mark were committed (lost ones are reported above); past it is a tail
        # around a gap nothing is provable (None): every row on disk is checked, none is touched
        vouched = max(array_rows, mark["array_rows"] if mark is not None else 0) if contiguous else None
        fixed, present = fixed_layers(grp), array_layers(grp)
        for l in sorted(set(fixed) - set(present)):
            if n:
                rep.errors.append(f"{path}/{layer_name(l)}: the array is missing (deleted?) and its {array_rows} "
                                  "committed rows with it; re-ingest into a new --store to rebuild")
        members = [layer_name(l) for l in present] + (["token_ids"] if key.pooling == "tokens" else [])
        widths = set()
        for name in members:
            try:
                arr = arrays.get_array(grp, name, path)
            except StoreError as e:
                rep.errors.append(str(e))
                continue
            if arr is None:  # its folder is there (listed), its metadata is not
                if not n:  # no row of the group was ever committed: a writer died creating its arrays
                    rep.tails.append(f"{path}/{name}: an array folder without zarr.json and no committed row (a "
                                     "run killed while creating its arrays); --repair removes it")
                    if self.repair:
                        remove_tree(self.store.zarr_path / path / name)
                    continue
                rep.errors.append(f"{path}/{name}/zarr.json is missing: the array cannot be read; re-ingest into a "
                                  "new --store")
                continue
            if arr.ndim == 2:
                widths.add(arr.shape[1])
            self.array(key, name, arr, array_rows, vouched, mark, fixed)
            if self.progress is not None:
                self.progress()
        if len(widths) > 1:
            rep.errors.append(f"{path}: layer arrays disagree on d_model: {sorted(widths)}")
        return n

    def _lost_commits(self, key: GroupKey, grp: zarr.Group, n: int, array_rows: int, mark: dict[str, int]) -> None:
        """Rows the mark vouches for but no rows part records: never a tail."""
        lost = mark["prompts"] - n
        if not self.repair:
            self.rep.errors.append(
                f"{key.path}: {lost} committed rows have no rows record (a rows part was lost or damaged); "
                "--repair moves their activations to quarantine/ so that a re-ingest captures them again")
            return
        for l in array_layers(grp):
            arr = arrays.get_array(grp, layer_name(l), key.path)
            self._quarantine_rows(key, layer_name(l), arr, array_rows, f"{lost} committed rows lost their rows part")
        if key.pooling == "tokens" and "token_ids" in grp:
            self._quarantine_rows(key, "token_ids", arrays.get_array(grp, "token_ids", key.path), array_rows, "token ids of the same rows")
        grp.attrs.update({COMMITTED_ATTR: {"prompts": n, "array_rows": array_rows}})
        self._moved(f"{key.path}: {lost} committed rows had no rows record; their activations are in quarantine/; "
                    "rerun the ingest to capture those prompts again")

    def _cut_at_gap(self, key: GroupKey, grp: zarr.Group | None, t: pa.Table, cut: int) -> pa.Table:
        """Roll a group back to the first gap in its row numbers (``cut``: the first row without a
        record): nothing can be numbered past a gap, and the rows after it cannot be told apart
        from a crash's leftovers. Their records and activations go to the quarantine, the rows
        table is rewritten without them (atomically, like a compaction), then the arrays are cut
        and the commit mark lowered; a re-ingest captures those prompts again. Returns the rows
        kept. A kill part way leaves either the old state or rows the mark vouches for without a
        record, which the next repair moves aside in turn (:meth:`_lost_commits`)."""
        path = key.path
        after = t.filter(pc.greater_equal(t["row"], cut))
        if key.pooling == "tokens":
            below = t.filter(pc.less(t["row"], cut))
            end = (int(below["token_start"][-1].as_py()) + int(below["token_count"][-1].as_py())) if cut else 0
        else:
            end = cut
        why = f"recorded after a gap in the row numbers (rows from {cut} had no record)"
        self.quarantine.save_table(after, "rows", f"{path.replace('/', '__')}.rows{cut}-", why)
        names = [layer_name(l) for l in array_layers(grp)] if grp is not None else []
        names += ["token_ids"] if grp is not None and key.pooling == "tokens" and "token_ids" in grp else []
        targets = []
        for name in names:
            arr = arrays.get_array(grp, name, path) if grp is not None else None
            if arr is not None and arr.shape[0] > end:
                values = arrays.read_rows_checked(arr, slice(end, arr.shape[0]), f"{path}/{name}")
                self.quarantine.save_rows(values, f"{path}/{name}", end, why)
                targets.append(arr)
        compaction.rewrite_without(self.store.tables_path / "rows", "rows", tables.ROWS_SCHEMA,
                                   lambda b: pc.and_(_matches(b, key), pc.greater_equal(b["row"], cut)))
        for arr in targets:  # only now that no record points past the cut
            arrays.truncate_rows(arr, end)
        if grp is not None:
            grp.attrs.update({COMMITTED_ATTR: {"prompts": cut, "array_rows": end}})
        self._moved(f"{path}: rows {cut}-{int(pc.max(t['row']).as_py())} came after a gap in the row numbers (a rows "
                    f"part from the middle was lost); their {after.num_rows} records and their activations are in "
                    "quarantine/; rerun the ingest to capture those prompts again")
        return t.filter(pc.less(t["row"], cut))

    def _quarantine_rows(self, key: GroupKey, name: str, arr: zarr.Array[Any] | None, start: int, why: str) -> None:
        if arr is not None and arr.shape[0] > start:
            values = arrays.read_rows_checked(arr, slice(start, arr.shape[0]), f"{key.path}/{name}")
            self.quarantine.save_rows(values, f"{key.path}/{name}", start, why)
            arrays.truncate_rows(arr, start)

    def array(self, key: GroupKey, name: str, arr: zarr.Array[Any], committed: int, vouched: int | None,
              mark: dict[str, int] | None,
              fixed: list[int]) -> None:
        """Check one array against ``committed`` rows (tokens for ``tokens`` pooling) that the rows
        table records and ``vouched`` rows the commit mark says were written (>= committed;
        None: all it holds)."""
        rep, where = self.rep, f"{key.path}/{name}"
        have = arr.shape[0]
        vouched = have if vouched is None else vouched
        if name != "token_ids" and int(name[1:]) not in fixed:
            if not have:
                return
            msg = f"{where}: {have} rows in a layer outside the group's layer set {format_layer_list(fixed)}"
            if self.repair:
                self._quarantine_rows(key, name, arr, 0, "a layer outside the group's layer set")
                self._moved(msg + "; moved to quarantine/")
            else:
                rep.errors.append(msg + "; --repair moves them to quarantine/")
            return
        if have < committed:
            rep.errors.append(f"{where}: {have} rows on disk but {committed} committed (data lost); the rows past "
                              f"{have} cannot be recovered: re-ingest into a new --store")
        elif have > vouched:
            if mark is not None:  # past the high-water mark: a crash's tail, provably uncommitted
                rep.tails.append(f"{where}: uncommitted tail of {have - vouched} rows")
                if self.repair:
                    arrays.truncate_rows(arr, vouched)
                    rep.repaired.append(f"truncated {where} to {vouched} rows")
            elif self.repair:
                self._quarantine_rows(key, name, arr, committed, "rows past the committed length in a store "
                                      "without a commit mark: not provably uncommitted")
                self._moved(f"{where}: {have - committed} rows past the committed length moved to quarantine/ "
                            "(this store predates commit marks, so they may have been committed)")
            else:
                rep.tails.append(f"{where}: {have - committed} rows past the committed length (no commit mark "
                                 "proves them uncommitted: --repair moves them to quarantine/)")
        n = min(have, vouched)
        if not n:
            return
        missing = arrays.missing_chunks(arr, n)
        if missing:
            rep.errors.append(f"{where}: {len(missing)} chunk(s) of committed rows are missing ({', '.join(missing[:3])}"
                              f"{', ...' if len(missing) > 3 else ''}); those rows would read as zeros: re-ingest "
                              "into a new --store")
        if self.values:
            self._scan_values(where, arr, n, set(missing))

    def _scan_values(self, where: str, arr: zarr.Array[Any], n: int, missing: set[str]) -> None:
        """Decode every chunk of rows [0, n) and count rows with NaN or inf."""
        per = arr.chunks[0]
        step = per * 16
        bad_rows, bad_chunks = 0, []
        for s in range(0, n, step):
            e = min(n, s + step)
            try:
                block = np.asarray(arr[s:e])
            except Exception:  # find which chunk(s) of the block do not decode
                block = None
                for c in range(s, e, per):
                    try:
                        np.asarray(arr[c:min(e, c + per)])
                    except Exception as err:
                        bad_chunks.append(f"{arr.metadata.encode_chunk_key((c // per, 0) if arr.ndim == 2 else (c // per,))}"
                                          f" ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
            if block is not None and block.ndim == 2:
                bad_rows += int((~np.isfinite(block)).any(axis=1).sum())
        if bad_chunks:
            self.rep.errors.append(f"{where}: {len(bad_chunks)} chunk(s) do not decode: {'; '.join(bad_chunks[:3])}; "
                                   "their rows are lost: re-ingest into a new --store")
        if bad_rows:
            self.rep.errors.append(f"{where}: {bad_rows} committed rows hold NaN or inf")

    # -- vectors -------------------------------------------------------------------------------
    def vectors(self, t: pa.Table) -> None:
        """Every stored vector is finite and not all zero (vectorised over the flattened values:
        a store holds thousands of vectors of thousands of values)."""
        if t.num_rows == 0:
            return
        col = t["vector"].combine_chunks()
        offsets = col.offsets.to_numpy()
        offsets = offsets - offsets[0]
        flat = col.flatten().to_numpy(zero_copy_only=False)
        def per_row(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:  # count of True per vector
            c = np.concatenate([[0], np.cumsum(mask)])
            counts: npt.NDArray[np.int64] = c[offsets[1:]] - c[offsets[:-1]]
            return counts
        nonfinite, nonzero = per_row(~np.isfinite(flat)), per_row(flat != 0)
        bad = np.flatnonzero((nonfinite > 0) | (nonzero == 0))
        if len(bad) == 0:
            return
        rows = t.take(pa.array(bad)).select(["vector_id", "trait", "method", "layer", "run_id"]).to_pylist()
        listing = "; ".join(f"{r['vector_id']} ({r['trait']} {r['method']} L{r['layer']}, run {r['run_id']}: "
                            + (f"{int(nonfinite[i])} NaN or infinite values" if nonfinite[i] else "all zeros") + ")"
                            for r, i in zip(rows[:5], bad[:5]))
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        self.rep.errors.append(f"tables/vectors: {len(bad)} stored vector(s) hold NaN, infinite or all-zero values: "
                               f"{listing}{more}. An older traitlens stored them (it now refuses to); no command "
                               "picks, scores, steers with or exports them, and no command deletes stored vectors, so "
                               "this stays reported: extract or combine again for usable ones")

    # -- the whole store -----------------------------------------------------------------------
    def run(self) -> Report:
        store, rep = self.store, self.rep
        temporaries, promotions = found = leftovers(store)
        rep.tails += [f"interrupted float32 promotion left {relative(p, store.root)}" for p in promotions]
        rep.tails += [f"temporary file {relative(p, store.root)}" for p in temporaries]
        if self.repair and (temporaries or promotions):
            rep.repaired += [f"removed {p}" for p in clean_temporaries(store, found)]
        read = {name: self.table(name) for name in TABLE_NAMES}
        self.vectors(read["vectors"])

        prompts = read["prompts"]
        # aggregates in Arrow, not Python loops: a 1M-prompt store is checked in a fraction of a second
        prompt_ids = pc.unique(prompts["prompt_id"]) if prompts.num_rows else pa.array([], pa.string())
        if len(prompt_ids) == prompts.num_rows:  # each id once (the common case): no key can repeat
            rep.checked["prompts"] = prompts.num_rows
        else:
            keys = prompts.group_by(["prompt_id", "dataset", "trait"]).aggregate(
                [("added_at", "count_distinct", pc.CountOptions(mode="all")), ([], "count_all")])
            twice = keys.filter(pc.greater(keys["count_all"], keys["added_at_count_distinct"]))
            if twice.num_rows:
                first = twice.slice(0, 1).to_pylist()[0]
                rep.errors.append(f"prompts table holds {twice.num_rows} (prompt_id, dataset, trait) keys recorded "
                                  f"twice at the same time, e.g. {(first['prompt_id'], first['dataset'], first['trait'])}")
            rep.checked["prompts"] = keys.num_rows

        rows = read["rows"]
        by_group: dict[GroupKey, pa.Table] = {}
        group_keys = rows.select(["model_key", "fmt", "site", "pooling"]).group_by(
            ["model_key", "fmt", "site", "pooling"]).aggregate([]).to_pylist() if rows.num_rows else []
        if len(group_keys) == 1:  # one group (the common case): no need to filter a copy out
            by_group[GroupKey(**group_keys[0])] = rows
        else:
            for g in group_keys:
                gk = GroupKey(g["model_key"], g["fmt"], g["site"], g["pooling"])
                f = ((pc.field("model_key") == gk.model_key) & (pc.field("fmt") == gk.fmt)
                     & (pc.field("site") == gk.site) & (pc.field("pooling") == gk.pooling))
                by_group[gk] = rows.filter(f)
        zgroups: dict[str, zarr.Group | None] = {}
        if store.zarr_path.exists():
            try:
                root = store.zarr_root(mode="a" if self.repair else "r")
                zgroups = self.zarr_groups(root)
            except StoreError as e:
                rep.errors.append(str(e))
        elif by_group:
            rep.errors.append("activations.zarr is missing: every committed activation is lost; "
                              "re-ingest into a new --store")
        n_rows_total = 0
        for path in sorted(set(zgroups) | {k.path for k in by_group}):
            key = next((k for k in by_group if k.path == path), None)
            if key is None:
                try:
                    key = GroupKey(*path.split("/"))
                except ValueError:
                    rep.errors.append(f"activations.zarr/{path}: not a traitlens group")
                    continue
            t = by_group.get(key, tables.ROWS_SCHEMA.empty_table())
            try:
                n_rows_total += self.group(key, zgroups.get(path), t, prompt_ids)
            except StoreError as e:  # damage met while repairing (a chunk that does not decode): a finding
                rep.errors.append(f"{path}: {e}")
        rep.checked["groups"] = len(by_group)
        rep.checked["rows"] = n_rows_total
        return rep


def _matches(batch: pa.RecordBatch, key: GroupKey) -> pa.BooleanArray:
    """Boolean mask of a rows batch: the rows of group ``key``."""
    m = pc.equal(batch["model_key"], key.model_key)
    for col in ("fmt", "site", "pooling"):
        m = pc.and_(m, pc.equal(batch[col], getattr(key, col)))
    return m


def verify(store: Store, repair: bool = False, check_values: bool = True,
           progress: Callable[[], object] | None = None) -> Report:
    """Check the store; with ``repair=True`` also drop provable tails and temporaries and move
    what cannot be proven uncommitted to ``quarantine/``. ``check_values=False`` is the cheap
    mode (no decoding of chunks or pages: footers, listings and shapes only)."""
    return _Verifier(store, repair, check_values, progress).run()
