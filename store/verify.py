"""Check every invariant of a store, and repair what a crash can leave behind.

Invariants, per group (model_key, fmt, site, pooling):
- rows are numbered 0..n-1 with no gap and no duplicate; no prompt appears twice;
- every row's prompt_id is in the prompts table (no orphan rows);
- every layer array has the same d and at least the committed number of rows, and all its
  committed values are finite; rows past the committed length are an uncommitted tail;
- tokens groups: token ranges are contiguous and ``token_ids`` covers them.
Store-wide: no leftover temporary files (``.tmp-*`` parts, ``*.partial`` chunks, interrupted
float32 promotions).

``repair`` only ever removes what is not committed: tails, temporaries, interrupted swaps.
Nothing committed is changed; problems it cannot fix (an array shorter than its commits,
non-finite committed values) are reported for a human.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import arrays
from .store import Store


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)  # committed data is wrong: needs a human
    tails: list[str] = field(default_factory=list)  # uncommitted leftovers: --repair removes them
    repaired: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.errors and not self.tails


def _temporaries(store: Store) -> list[Path]:
    found = [p for p in store.tables_path.rglob(".tmp-*")]
    if store.zarr_path.exists():
        found += list(store.zarr_path.rglob("*.partial"))
    return found


def _interrupted_promotions(store: Store) -> list[Path]:
    if not store.zarr_path.exists():
        return []
    # promotions rename whole array folders: match names first (cheap on object stores), then folders
    hits = {p for pat in ("*.old", "*.f32tmp") for p in store.zarr_path.rglob(pat)}
    return sorted(p for p in hits if (p / "zarr.json").exists())


def clean_temporaries(store: Store) -> list[str]:
    """Remove what dead writers left (temporary parts and chunks, half-done promotions).

    Call only while holding the store's writer lock: a live writer's temporaries look alike.
    """
    done = []
    for p in _interrupted_promotions(store):
        done += arrays.restore_interrupted_promotions(p.parent)
    for p in _temporaries(store):
        p.unlink(missing_ok=True)
        done.append(str(p))
    return done


def verify(store: Store, repair: bool = False, check_values: bool = True, progress=None) -> Report:
    """Check the store; with ``repair=True`` also drop uncommitted tails and temporaries."""
    rep = Report()
    rep.tails += [f"interrupted float32 promotion left {p.relative_to(store.root)}"
                  for p in _interrupted_promotions(store)]
    rep.tails += [f"temporary file {p.relative_to(store.root)}" for p in _temporaries(store)]
    if repair:
        rep.repaired += [f"removed {p}" for p in clean_temporaries(store)]

    prompts = store.table("prompts", columns=["prompt_id", "dataset", "trait"])
    prompt_ids = set(prompts["prompt_id"].to_pylist())
    dup_keys = [k for k, c in Counter(zip(*(prompts[c].to_pylist() for c in ("prompt_id", "dataset", "trait")))).items() if c > 1]
    if dup_keys:
        rep.errors.append(f"prompts table holds {len(dup_keys)} duplicated (prompt_id, dataset, trait) keys, e.g. {dup_keys[0]}")
    rep.checked["prompts"] = prompts.num_rows

    root = store.zarr_root(mode="a" if repair else "r") if store.zarr_path.exists() else None
    n_rows_total = 0
    groups = store.groups()
    for key in groups:
        t = store.group_rows(key)
        n = t.num_rows
        n_rows_total += n
        rows = np.asarray(t["row"].to_pylist(), dtype=np.int64)
        if not np.array_equal(rows, np.arange(n)):
            dups = [r for r, c in Counter(rows.tolist()).items() if c > 1]
            rep.errors.append(f"{key.path}: row numbers are not 0..{n - 1} (duplicates: {dups[:5]})")
        ids = t["prompt_id"].to_pylist()
        dup_ids = [p for p, c in Counter(ids).items() if c > 1]
        if dup_ids:
            rep.errors.append(f"{key.path}: {len(dup_ids)} prompts stored more than once, e.g. {dup_ids[0]}")
        orphans = [p for p in set(ids) if p not in prompt_ids]
        if orphans:
            rep.errors.append(f"{key.path}: {len(orphans)} rows point at prompts missing from the prompts table, e.g. {orphans[0]}")
        array_rows = n
        if key.pooling == "tokens" and n:
            starts = np.asarray(t["token_start"].to_pylist(), dtype=np.int64)
            counts = np.asarray(t["token_count"].to_pylist(), dtype=np.int64)
            expect = np.concatenate([[0], np.cumsum(counts)[:-1]])
            if not np.array_equal(starts, expect):
                rep.errors.append(f"{key.path}: token ranges are not contiguous")
            array_rows = int(counts.sum())
        group = arrays.get_group(root, key.path) if root is not None else None
        if group is None:
            rep.errors.append(f"{key.path}: {n} committed rows but no arrays on disk")
            continue
        names = [n_ for n_ in group.array_keys()]
        ds = set()
        for name in sorted(names):
            arr = group[name]
            if name == "token_ids" and key.pooling != "tokens":
                continue
            if arr.ndim == 2:
                ds.add(arr.shape[1])
            have = arr.shape[0]
            if have < array_rows:
                rep.errors.append(f"{key.path}/{name}: {have} rows on disk but {array_rows} committed (data lost)")
                continue
            if have > array_rows:
                rep.tails.append(f"{key.path}/{name}: uncommitted tail of {have - array_rows} rows")
                if repair:
                    arrays.truncate_rows(arr, array_rows)
                    rep.repaired.append(f"truncated {key.path}/{name} to {array_rows} rows")
            if check_values and arr.ndim == 2 and array_rows:
                step = max(1, (arr.chunks[0]) * 16)
                bad = 0
                for s in range(0, array_rows, step):
                    block = np.asarray(arr[s:min(array_rows, s + step)])
                    bad += int((~np.isfinite(block)).any(axis=1).sum())
                if bad:
                    rep.errors.append(f"{key.path}/{name}: {bad} committed rows hold NaN or inf")
            if progress is not None:
                progress()
        if len(ds) > 1:
            rep.errors.append(f"{key.path}: layer arrays disagree on d_model: {sorted(ds)}")
    # arrays of groups that never committed a row are pure tails
    if root is not None:
        committed_paths = {k.path for k in groups}
        for path, node in root.members(max_depth=None):
            if hasattr(node, "shape") and "/".join(path.split("/")[:-1]) not in committed_paths and node.shape[0] > 0:
                rep.tails.append(f"{path}: {node.shape[0]} rows in a group with no commit")
                if repair:
                    arrays.truncate_rows(node, 0)
                    rep.repaired.append(f"truncated {path} to 0 rows")
    rep.checked["groups"] = len(groups)
    rep.checked["rows"] = n_rows_total
    return rep


