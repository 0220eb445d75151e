"""Zarr v3 layer arrays: creation, chunk-aligned appends, float16 with an overflow fallback.

Each layer of a group is one 2-D array ``[n_rows, d_model]`` chunked along rows only, so a
read of any row range touches whole rows of contiguous chunks. zarr's LocalStore writes every
chunk through a temporary file and a rename, so a crash leaves a chunk old or new, never torn;
on object storage (``FsspecStore``) each chunk is one PUT, which is atomic the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .location import is_remote, move_tree, remove_tree

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def _zarr_store(path, read_only: bool):
    """A zarr store for a local folder or an fsspec URL."""
    if not is_remote(path):
        return zarr.storage.LocalStore(str(path), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(str(path), storage_options=dict(path.storage_options) or None,
                                             read_only=read_only)


def open_root(path: Path, mode: str = "a") -> zarr.Group:
    """The store's ``activations.zarr`` root group."""
    return zarr.open_group(_zarr_store(path, read_only=mode == "r"), mode=mode)


def open_array(path: Path, mode: str = "r+") -> zarr.Array:
    """One array by its folder."""
    return zarr.open_array(_zarr_store(path, read_only=mode == "r"), mode=mode)


def require_group(root: zarr.Group, group_path: str) -> zarr.Group:
    """Create the nested group ``a/b/c`` if missing and return it."""
    group = root
    for part in group_path.split("/"):
        group = group.require_group(part)
    return group


def get_group(root: zarr.Group, group_path: str) -> zarr.Group | None:
    try:
        node = root[group_path]
    except KeyError:
        return None
    return node if isinstance(node, zarr.Group) else None


def create_layer_array(group: zarr.Group, name: str, d: int, dtype: str, chunk_rows: int) -> zarr.Array:
    """An empty ``[0, d]`` array that grows along rows."""
    return group.create_array(
        name, shape=(0, d), chunks=(chunk_rows, d), dtype=dtype, fill_value=0, dimension_names=("row", "feature")
    )


def needs_float32(values: np.ndarray) -> bool:
    """True when a finite value would overflow float16 (|x| > 65504).

    NaN and inf produced by the model are not an overflow: they are stored as they are and
    ``verify`` reports them.
    """
    finite = values[np.isfinite(values)]
    return finite.size > 0 and float(np.abs(finite).max()) > FLOAT16_MAX


def write_rows(array: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write ``values`` [n, ...] at rows ``[start, start + n)``, resizing the array to end there.

    Anything past ``start`` (an uncommitted tail left by a crash) is overwritten or dropped.
    Works for layer arrays [n, d] and for 1-D ones (token ids).
    """
    stop = start + values.shape[0]
    if array.shape[0] != stop:
        array.resize((stop,) + tuple(array.shape[1:]))
    if values.shape[0]:
        array[start:stop] = values.astype(array.dtype, copy=False)


def truncate_rows(array: zarr.Array, n_rows: int) -> None:
    """Drop rows past ``n_rows``; never grows the array."""
    if array.shape[0] > n_rows:
        array.resize((n_rows,) + tuple(array.shape[1:]))


def promote_to_float32(group: zarr.Group, group_dir: Path, name: str, committed_rows: int, chunk_rows: int) -> zarr.Array:
    """Rewrite a float16 layer array as float32, keeping its first ``committed_rows`` rows.

    The new array is built beside the old one, then swapped in by two renames; a crash between
    them leaves ``<name>.old`` which :func:`restore_interrupted_promotions` puts back.
    """
    old = group[name]
    tmp_name, old_name = f"{name}.f32tmp", f"{name}.old"
    remove_tree(group_dir / tmp_name)
    new = create_layer_array(group, tmp_name, old.shape[1], "float32", chunk_rows)
    for start in range(0, committed_rows, chunk_rows * 16):
        stop = min(committed_rows, start + chunk_rows * 16)
        write_rows(new, start, np.asarray(old[start:stop], dtype=np.float32))
    move_tree(group_dir / name, group_dir / old_name)
    move_tree(group_dir / tmp_name, group_dir / name)
    remove_tree(group_dir / old_name)
    return open_array(group_dir / name)


def restore_interrupted_promotions(group_dir: Path) -> list[str]:
    """Undo what a crash in :func:`promote_to_float32` left; returns what was fixed."""
    fixed = []
    for old in group_dir.glob("*.old"):
        target = group_dir / old.name[: -len(".old")]
        if target.exists():
            remove_tree(old)
        else:
            move_tree(old, target)
        fixed.append(str(old))
    for tmp in group_dir.glob("*.f32tmp"):
        remove_tree(tmp)
        fixed.append(str(tmp))
    return fixed

