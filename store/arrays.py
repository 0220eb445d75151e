"""Zarr v3 layer arrays: creation, chunk-aligned appends, float16 with an overflow fallback.

Each layer of a group is one 2-D array ``[n_rows, d_model]`` chunked along rows only, so a
read of any row range touches whole rows of contiguous chunks. zarr's LocalStore writes every
chunk through a temporary file and a rename, so a crash leaves a chunk old or new, never torn;
on object storage (``FsspecStore``) each chunk is one PUT, which is atomic the same way.

Chunks are Zstd frames with a content checksum, so a flipped byte fails to decode instead of
serving wrong values; a chunk that is missing would read as the fill value (zeros), so
readers that must not serve it check :func:`missing_chunks` and ``verify`` checks every one.
Decode and metadata failures surface as :class:`~traitlens.store.layout.StoreError` naming
the array, never as a codec traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from .layout import StoreError
from .location import StorePath, as_remote, capabilities, move, remove_tree

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504

Mode = Literal["r", "r+", "a", "w", "w-"]  # zarr's open modes
Node = TypeVar("Node", zarr.Group, "zarr.Array[Any]")


def _zarr_store(path: StorePath, read_only: bool) -> zarr.storage.LocalStore | zarr.storage.FsspecStore:
    """A zarr store for a local folder or an fsspec URL."""
    if capabilities(path).local_files:
        return zarr.storage.LocalStore(str(path), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(str(path), storage_options=dict(as_remote(path).storage_options) or None,
                                             read_only=read_only)


def open_root(path: StorePath, mode: Mode = "a") -> zarr.Group:
    """The store's ``activations.zarr`` root group."""
    if mode == "r" and not path.exists():
        raise StoreError(f"{path} is missing: the store's activations are gone; run `traitlens verify`")
    try:
        return zarr.open_group(_zarr_store(path, read_only=mode == "r"), mode=mode)
    except Exception as e:  # garbage zarr.json: JSON or metadata errors
        raise StoreError(f"{path}/zarr.json is damaged ({type(e).__name__}: {e}); run `traitlens verify`") from None


def open_array(path: StorePath, mode: Mode = "r+") -> zarr.Array[Any]:
    """One array by its folder."""
    return zarr.open_array(_zarr_store(path, read_only=mode == "r"), mode=mode)


def require_group(root: zarr.Group, group_path: str) -> zarr.Group:
    """Create the nested group ``a/b/c`` if missing and return it."""
    group = root
    for part in group_path.split("/"):
        group = group.require_group(part)
    return group


def _member(parent: zarr.Group, name: str, kind: type[Node], label: str) -> Node | None:
    """``parent[name]`` if it is a ``kind``, None if absent; damaged metadata is a ``StoreError``."""
    try:
        node = parent[name]
    except KeyError:
        return None
    except Exception as e:  # JSON, metadata or codec errors of a damaged zarr.json
        raise StoreError(f"{label}/zarr.json is damaged ({type(e).__name__}: {e}); run `traitlens verify`") from None
    return node if isinstance(node, kind) else None


def get_group(root: zarr.Group, group_path: str) -> zarr.Group | None:
    """The group at ``group_path`` (relative to ``activations.zarr``), None if absent."""
    return _member(root, group_path, zarr.Group, f"activations.zarr/{group_path}")


def get_array(group: zarr.Group, name: str, where: str = "") -> zarr.Array[Any] | None:
    """Member array ``name`` of ``group`` (``where``: the group's path, for messages), None if absent."""
    return _member(group, name, zarr.Array, f"{where or group.path}/{name}")


def create_layer_array(group: zarr.Group, name: str, d: int, dtype: str, chunk_rows: int) -> zarr.Array[Any]:
    """An empty ``[0, d]`` array that grows along rows."""
    return group.create_array(
        name, shape=(0, d), chunks=(chunk_rows, d), dtype=dtype, fill_value=0, dimension_names=("row", "feature"),
        compressors=ZstdCodec(level=0, checksum=True),
    )


def _listing(node: zarr.Group | zarr.Array[Any], method: str, prefix: str) -> list[str]:
    """One listing of the node's store (``list_dir`` or ``list_prefix``), synchronously."""
    async def collect() -> list[str]:
        return [k async for k in getattr(node.store_path.store, method)(prefix)]

    return sync(collect())


def member_names(group: zarr.Group) -> list[str]:
    """Names of a group's children from one listing, without parsing their metadata (so one
    damaged ``zarr.json`` does not hide its siblings)."""
    names = _listing(group, "list_dir", group.store_path.path.rstrip("/"))
    return sorted(k.rstrip("/") for k in names if k.rstrip("/") != "zarr.json")


def checked_layer(group: zarr.Group, name: str, n_rows: int, where: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group`` to serve its first ``n_rows`` (committed) rows from:
    refused with a ``StoreError`` when it is missing, shorter, or lacks a chunk of those rows
    (a missing chunk would be served as zeros)."""
    arr = get_array(group, name, where)
    if arr is None:
        raise StoreError(f"{where}/{name} is missing but {n_rows} rows are committed; run `traitlens verify`")
    if arr.shape[0] < n_rows:
        raise StoreError(f"{where}/{name} holds {arr.shape[0]} rows but {n_rows} are committed; run `traitlens verify`")
    gone = missing_chunks(arr, n_rows)
    if gone:
        raise StoreError(f"{where}/{name}: {len(gone)} chunk(s) of committed rows are missing ({', '.join(gone[:3])}); "
                         "refusing to serve them as zeros; run `traitlens verify`")
    return arr


def stored_chunk_keys(array: zarr.Array[Any]) -> set[str]:
    """Keys (``c/3/0``) of the chunks present in storage, from one listing of the array's prefix."""
    prefix = array.store_path.path.rstrip("/") + "/"
    store = array.store_path.store
    if isinstance(store, zarr.storage.LocalStore):  # a walk of the folder: ~4x faster than zarr's async listing
        base = os.path.join(str(store.root), prefix)
        return {os.path.relpath(os.path.join(top, f), base).replace(os.sep, "/")
                for top, _, files in os.walk(base) for f in files}
    return {k[len(prefix):] for k in _listing(array, "list_prefix", prefix)}


def row_chunk_keys(array: zarr.Array[Any], n_rows: int) -> list[str]:
    """Keys of the chunks holding rows ``[0, n_rows)`` (arrays are chunked along rows only)."""
    per = array.chunks[0]
    n_col_chunks = -(-array.shape[1] // array.chunks[1]) if array.ndim == 2 else 1
    keys = []
    for i in range(-(-n_rows // per)):
        for j in range(n_col_chunks):
            keys.append(array.metadata.encode_chunk_key((i, j) if array.ndim == 2 else (i,)))
    return keys


def missing_chunks(array: zarr.Array[Any], n_rows: int) -> list[str]:
    """Chunks of rows ``[0, n_rows)`` that are not in storage (they would read as zeros)."""
    have = stored_chunk_keys(array)
    return [k for k in row_chunk_keys(array, n_rows) if k not in have]


def read_rows_checked(array: zarr.Array[Any], sel: slice | npt.NDArray[np.integer[Any]] | Sequence[int],
                      what: str = "") -> npt.NDArray[Any]:
    """``array[sel]`` (a slice or, with ``oindex``, row indices), with decode failures as one
    ``StoreError`` that names the array and the fix."""
    try:
        if isinstance(sel, slice):
            return np.asarray(array[sel])
        return np.asarray(array.oindex[np.asarray(sel), :])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # codec errors come as RuntimeError, ValueError, zstd's own types...
        raise StoreError(f"{what or array.store_path}: a chunk does not decode ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); run `traitlens verify` to find it") from None


def needs_float32(values: npt.NDArray[np.floating[Any]]) -> bool:
    """True when a finite value would overflow float16 (|x| > 65504).

    NaN and inf produced by the model are not an overflow: they are stored as they are and
    ``verify`` reports them.
    """
    finite = values[np.isfinite(values)]
    return finite.size > 0 and float(np.abs(finite).max()) > FLOAT16_MAX


def write_rows(array: zarr.Array[Any], start: int, values: npt.NDArray[Any], shrink: bool = True) -> None:
    """Write ``values`` [n, ...] at rows ``[start, start + n)``, resizing the array to end there.

    Anything past ``start`` (an uncommitted tail left by a crash) is overwritten or dropped;
    ``shrink=False`` keeps what lies past the write (rows reserved for other writers).
    Works for layer arrays [n, d] and for 1-D ones (token ids).
    """
    stop = start + values.shape[0]
    if array.shape[0] < stop or (shrink and array.shape[0] != stop):
        array.resize((stop,) + tuple(array.shape[1:]))
    if values.shape[0]:
        array[start:stop] = values.astype(array.dtype, copy=False)


def truncate_rows(array: zarr.Array[Any], n_rows: int) -> None:
    """Drop rows past ``n_rows``; never grows the array."""
    if array.shape[0] > n_rows:
        array.resize((n_rows,) + tuple(array.shape[1:]))


def promote_to_float32(group: zarr.Group, group_dir: StorePath, name: str, committed_rows: int,
                       chunk_rows: int) -> zarr.Array[Any]:
    """Rewrite a float16 layer array as float32, keeping its first ``committed_rows`` rows.

    The new array is built beside the old one, then swapped in by two renames; a crash between
    them leaves ``<name>.old`` which :func:`restore_interrupted_promotions` puts back.
    """
    old = get_array(group, name)
    if old is None:
        raise StoreError(f"{group.path}/{name} is missing; run `traitlens verify`")
    tmp_name, old_name = f"{name}.f32tmp", f"{name}.old"
    remove_tree(group_dir / tmp_name)
    new = create_layer_array(group, tmp_name, old.shape[1], "float32", chunk_rows)
    for start in range(0, committed_rows, chunk_rows * 16):
        stop = min(committed_rows, start + chunk_rows * 16)
        write_rows(new, start, np.asarray(old[start:stop], dtype=np.float32))
    move(group_dir / name, group_dir / old_name)
    move(group_dir / tmp_name, group_dir / name)
    remove_tree(group_dir / old_name)
    return open_array(group_dir / name)


def restore_interrupted_promotions(group_dir: StorePath) -> list[str]:
    """Undo what a crash in :func:`promote_to_float32` left; returns what was fixed."""
    fixed = []
    for old in group_dir.glob("*.old"):
        target = group_dir / old.name[: -len(".old")]
        if target.exists():
            remove_tree(old)
        else:
            move(old, target)
        fixed.append(str(old))
    for tmp in group_dir.glob("*.f32tmp"):
        remove_tree(tmp)
        fixed.append(str(tmp))
    return fixed

