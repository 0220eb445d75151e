"""Where a store lives: a local folder, or any fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``).

A local store is a :class:`pathlib.Path`; a remote one is a :class:`upath.UPath` over the
URL's fsspec filesystem, which offers the same pathlib calls. Where the two differ, a location
declares what it can do (:class:`Capabilities`) and the code asks for that, never which
backend a path is; :func:`capabilities` is the one place that tells them apart.

================================  =================================  =================================
capability                        local folder                       object storage (fsspec URL)
================================  =================================  =================================
``atomic_rename``                 a file is written beside its name,  no rename: a file is one whole PUT
                                  fsynced and renamed into place      (visible only once complete); a
                                  (a folder moves in one rename)      folder moves by copy then delete
``folders``                       folders are made before files go    a key makes its own prefix; a
                                  in; listed with ``os.listdir``      listing of a missing one is empty
``file_locks``                    ``flock`` on ``<root>/.lock``       a lease object renewed by a
                                                                      heartbeat (:mod:`.lock`)
``local_files``                   any program opens a file by path    files are reached through the
                                  (DuckDB's ``read_parquet``,         filesystem object (pyarrow
                                  Zarr's ``LocalStore``); paths       datasets, Zarr's ``FsspecStore``);
                                  resolve; outputs may sit beside     outputs go elsewhere
================================  =================================  =================================

Either way a reader sees a file whole or not at all, and a crash leaves the old file or the new
one (plus, locally, at most a ``.tmp-*`` that ``verify --repair`` removes).

``file:///abs/path`` URLs are plain local paths (``file://relative/path`` names a host, not a
folder, and is refused). A name that looks like a URL but is not one (``s3:/bucket``,
``s3:bucket``) is refused rather than taken for a local folder called ``s3:``. Credentials come
the fsspec way (environment, config files, or ``storage_options`` on a :class:`UPath` passed in
directly). ``memory://`` lives as long as the process: fine for the Python API and tests, and
refused by the command line (:func:`check_lasting`), whose process ends with the command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Union, cast

from upath import UPath

from .errors import InputError

StorePath = Union[Path, UPath]


@dataclass(frozen=True)
class Capabilities:
    """What a storage location offers (see the module's table)."""

    name: str
    atomic_rename: bool  # write beside, fsync, rename into place; folders move in one rename
    folders: bool  # folders exist by themselves: made before files go in, listed by the OS
    file_locks: bool  # flock works on a file of the store
    local_files: bool  # on this machine's disk: other programs open its files by path; paths resolve


LOCAL_FOLDER = Capabilities("local folder", atomic_rename=True, folders=True, file_locks=True, local_files=True)
OBJECT_STORAGE = Capabilities("fsspec URL", atomic_rename=False, folders=False, file_locks=False, local_files=False)


def capabilities(path: object) -> Capabilities:
    """What the location of ``path`` (a store path, or any path under one) offers."""
    return LOCAL_FOLDER if isinstance(path, Path) else OBJECT_STORAGE


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: C:/ is a Windows drive


def store_path(root: str | StorePath) -> StorePath:
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
            _ = p.fs  # resolve the filesystem now: an unknown protocol is an error here, not mid-run
        except (ImportError, ValueError) as e:
            raise ValueError(f"cannot open store URL {text}: {e} (install the fsspec backend for "
                             f"{text.split('://')[0]!r}, e.g. s3fs, gcsfs or adlfs)") from None
        return p
    return Path(text).expanduser()


def as_local(path: StorePath) -> Path:
    """``path`` where :func:`capabilities` has said it is a local folder: a :class:`pathlib.Path`."""
    return cast(Path, path)


def as_remote(path: StorePath) -> UPath:
    """``path`` where :func:`capabilities` has said it is not a local folder: a :class:`UPath`."""
    return cast(UPath, path)


def relative(path: StorePath, root: StorePath) -> str:
    """``path`` (under ``root``, both a Path or both a UPath) relative to ``root``, for messages."""
    return str(path.relative_to(root))  # type: ignore[arg-type]  # mypy cannot pair the union's members


def check_lasting(path: StorePath, option: str = "--store") -> None:
    """Refuse a ``memory://`` store where it would vanish with the process (the command line):
    an :class:`InputError` naming the option."""
    if capabilities(path).local_files:
        return
    protocol = as_remote(path).fs.protocol
    if "memory" in (protocol if isinstance(protocol, tuple) else (protocol,)):
        raise InputError(f"{option} {path}: a memory:// store lives only as long as its process, and this command's "
                         "process ends with it (everything written would be lost); use a folder or an object store "
                         "URL (memory:// is for the Python API and tests)")


def shown(path: StorePath) -> str:
    """A store path for messages: resolved where it is a local path, the URL otherwise."""
    return str(path.resolve() if capabilities(path).local_files else path)


def make_folder(path: StorePath) -> None:
    """Make the folder ``path`` (and its parents) where folders exist by themselves."""
    if capabilities(path).folders:
        path.mkdir(parents=True, exist_ok=True)


def list_folder(folder: StorePath) -> list[str]:
    """The names in ``folder`` (one listing; a missing folder lists empty)."""
    if capabilities(folder).folders:
        import os

        try:
            return os.listdir(as_local(folder))
        except FileNotFoundError:
            return []
    return [p.name for p in folder.iterdir()] if folder.exists() else []


def write_atomically(path: StorePath, write: Callable[[IO[bytes]], object]) -> None:
    """Create or replace the file ``path`` whole or not at all: ``write(f)`` fills a binary file
    object. With atomic renames: a hidden temporary beside it, fsync, rename, fsync of the
    folder (a crash leaves the old file or the new one, plus at most a ``.tmp-*`` that
    ``verify --repair`` removes). Without: one PUT of the whole object."""
    if not capabilities(path).atomic_rename:
        import io

        buf = io.BytesIO()
        write(buf)
        as_remote(path).fs.pipe_file(as_remote(path).path, buf.getvalue())  # visible whole or not at all
        return
    import os
    import uuid

    path = as_local(path)
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


def write_text_atomically(path: str | Path, text: str) -> None:
    """A local output file of UTF-8 text, written whole or not at all (:func:`write_atomically`):
    a failure or an interrupt never leaves a truncated file."""
    data = text.encode("utf-8")
    write_atomically(Path(path), lambda f: f.write(data))


def remove_tree(path: StorePath) -> None:
    """Delete a folder and everything under it (missing is fine)."""
    if capabilities(path).folders:
        import shutil

        shutil.rmtree(as_local(path), ignore_errors=True)
    elif path.exists():
        as_remote(path).fs.rm(as_remote(path).path, recursive=True)


def move(src: StorePath, dst: StorePath) -> None:
    """Move a file or a folder to ``dst`` (its folder made as needed). With atomic renames: one
    rename. Without: copy then delete (a crash between them leaves both)."""
    if capabilities(src).atomic_rename:
        make_folder(dst.parent)
        as_local(src).rename(as_local(dst))
    else:
        as_remote(src).fs.mv(as_remote(src).path, as_remote(dst).path, recursive=True)


def arrow_files(paths: list[StorePath]) -> tuple[Any, list[str]]:
    """``(filesystem, paths)`` for ``pyarrow.dataset.dataset``: None and plain paths for local files."""
    if not paths or capabilities(paths[0]).local_files:
        return None, [str(p) for p in paths]
    return as_remote(paths[0]).fs, [as_remote(p).path for p in paths]


def check_output_path(output: str | StorePath | None, root: StorePath, option: str = "-o") -> None:
    """An output file a command will write: outside the store (:func:`check_outside_store`), in a
    folder that exists, and not itself a folder; else an :class:`InputError` naming the option."""
    check_outside_store(output, root, option)
    if output is None or "://" in str(output):
        return
    out = Path(str(output)).expanduser()
    if out.is_dir():
        raise InputError(f"{option} {output}: that is a folder; give a file name")
    if not out.parent.is_dir():
        raise InputError(f"{option} {output}: no such folder {out.parent}; create it first or write somewhere else")


def check_outside_store(output: str | StorePath | None, root: StorePath, option: str = "-o") -> None:
    """Refuse an output file of a command (query results, plots, exports, reports) that would
    land inside the store: only the store's own writers write there, and a stray Parquet file
    under ``tables/`` would be read as a part. Raises ``ValueError`` naming the option."""
    if output is None or not capabilities(root).local_files or "://" in str(output):
        return
    out = Path(str(output)).expanduser().resolve()
    base = Path(str(root)).expanduser().resolve()
    if out == base or base in out.parents:
        raise InputError(f"{option} {output}: that is inside the store {root}; only traitlens' own writers write "
                         "there (a file under tables/ would be read as data). Write it somewhere else")


def sha256_file(path: str | StorePath) -> str:
    """The SHA-256 of a file's bytes (a local path or a remote one), read 1 MB at a time."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") if hasattr(path, "open") else open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
