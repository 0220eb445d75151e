"""Where a store lives: a local folder, or any fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``).

A local store is a :class:`pathlib.Path` and keeps every local guarantee (temporary file +
fsync + rename for parts, ``flock`` for the writer lock). A remote store is a
:class:`upath.UPath` over the URL's fsspec filesystem; it offers the same pathlib calls, and
the few places where object storage differs branch on :func:`is_remote`:

- a part is uploaded whole in one PUT (an object becomes visible only once its upload
  completes, so readers never see half of one; there is no rename to do it with);
- the writer lock is a lease object renewed by a heartbeat (see :mod:`.lock`);
- Zarr goes through ``zarr.storage.FsspecStore``; DuckDB reads parts through pyarrow datasets.

``file:///abs/path`` URLs are plain local paths (``file://relative/path`` names a host, not a
folder, and is refused). A name that looks like a URL but is not one (``s3:/bucket``,
``s3:bucket``) is refused rather than taken for a local folder called ``s3:``. Credentials come
the fsspec way (environment, config files, or ``storage_options`` on a :class:`UPath` passed in
directly). ``memory://`` lives as long as the process: fine for the Python API and tests, and
refused by the command line (:func:`check_lasting`), whose process ends with the command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from upath import UPath

from .errors import InputError

StorePath = Union[Path, UPath]


def store_path(root) -> StorePath:
    """A store root as a ``Path`` (local) or ``UPath`` (any other fsspec URL)."""
    if isinstance(root, (Path, UPath)):
        return root
    text = str(root)
    if not text.strip():
        raise InputError("the store path is empty: give a folder or a URL (s3://bucket/store)")
    if text.startswith("file://"):
        rest = text[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise InputError(f"{text}: a file:// URL takes an absolute path, file:///abs/path (three slashes; "
                             f"file://{rest.split('/')[0]}/... would name a host); for a folder relative to here, "
                             "give the path itself")
        return Path(rest)
    scheme = _SCHEME.match(text)
    if scheme and "://" not in text and "::" not in text:
        raise InputError(f"{text}: a malformed URL ({scheme.group(1)}:// takes two slashes): write "
                         f"{scheme.group(1)}://bucket/path, or ./{text} for a local folder of that name")
    if "://" in text or "::" in text:
        try:
            p = UPath(text)
            p.fs  # resolve the filesystem now: an unknown protocol is an error here, not mid-run
        except (ImportError, ValueError) as e:
            raise ValueError(f"cannot open store URL {text}: {e} (install the fsspec backend for "
                             f"{text.split('://')[0]!r}, e.g. s3fs, gcsfs or adlfs)") from None
        return p
    return Path(text).expanduser()


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: C:/ is a Windows drive


def check_lasting(path, option: str = "--store") -> None:
    """Refuse a ``memory://`` store where it would vanish with the process (the command line):
    an :class:`InputError` naming the option."""
    if is_remote(path) and "memory" in (path.fs.protocol if isinstance(path.fs.protocol, tuple)
                                        else (path.fs.protocol,)):
        raise InputError(f"{option} {path}: a memory:// store lives only as long as its process, and this command's "
                         "process ends with it (everything written would be lost); use a folder or an object store "
                         "URL (memory:// is for the Python API and tests)")


def is_remote(path) -> bool:
    """True for a store path on an fsspec filesystem rather than the local disk."""
    return not isinstance(path, Path)


def write_bytes_whole(path, data: bytes) -> None:
    """Upload ``data`` as one object: visible whole or not at all on object stores."""
    path.fs.pipe_file(path.path, data)


def write_atomically(path, write) -> None:
    """Create or replace the file ``path`` whole or not at all: ``write(f)`` fills a binary file
    object. Local: a hidden temporary beside it, fsync, rename, fsync of the folder (a crash
    leaves the old file or the new one, plus at most a ``.tmp-*`` that ``verify --repair``
    removes). Object storage: one PUT of the whole object."""
    if is_remote(path):
        import io

        buf = io.BytesIO()
        write(buf)
        write_bytes_whole(path, buf.getvalue())
        return
    import os
    import uuid

    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path) -> None:
    """Delete a folder and everything under it (missing is fine)."""
    if is_remote(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def move_tree(src, dst) -> None:
    """Move a folder. Local: one atomic rename. Remote: copy then delete (object stores cannot rename)."""
    if is_remote(src):
        src.fs.mv(src.path, dst.path, recursive=True)
    else:
        src.rename(dst)


def arrow_files(paths: list) -> tuple[object | None, list[str]]:
    """``(filesystem, paths)`` for ``pyarrow.dataset.dataset``: None and plain paths when local."""
    if not paths or not is_remote(paths[0]):
        return None, [str(p) for p in paths]
    return paths[0].fs, [p.path for p in paths]


def check_output_path(output, root, option: str = "-o") -> None:
    """An output file a command will write: outside the store (:func:`check_outside_store`), in a
    folder that exists, and not itself a folder; else an :class:`InputError` naming the option."""
    check_outside_store(output, root, option)
    if output is None or "://" in str(output):
        return
    out = Path(output).expanduser()
    if out.is_dir():
        raise InputError(f"{option} {output}: that is a folder; give a file name")
    if not out.parent.is_dir():
        raise InputError(f"{option} {output}: no such folder {out.parent}; create it first or write somewhere else")


def check_outside_store(output, root, option: str = "-o") -> None:
    """Refuse an output file of a command (query results, plots, exports, reports) that would
    land inside the store: only the store's own writers write there, and a stray Parquet file
    under ``tables/`` would be read as a part. Raises ``ValueError`` naming the option."""
    if output is None or is_remote(root) or "://" in str(output):
        return
    out = Path(output).expanduser().resolve()
    base = Path(root).expanduser().resolve()
    if out == base or base in out.parents:
        raise InputError(f"{option} {output}: that is inside the store {root}; only traitlens' own writers write "
                         "there (a file under tables/ would be read as data). Write it somewhere else")
