"""What a corpus argument names: files, folders and globs expanded to :class:`Source` files.

- a file: one source, named by its stem (``persona.jsonl.gz`` -> ``persona``);
- a glob (``'data/*.parquet'``, quoted so the shell leaves it alone): every match in sorted
  order, each as if named alone; a glob that matches nothing is an error;
- a folder written by ``datasets`` ``save_to_disk``: its Arrow shards in the order its
  ``state.json`` lists them; a ``DatasetDict`` folder (``dataset_dict.json``): each split's
  folder, the split's name kept as the records' split when it is train, validation or test;
- a folder of ``positive.txt`` / ``negative.txt`` (or of sub-folders holding them): the trait
  folders of :mod:`..corpus`;
- any other folder: every corpus file under it, in sorted order (hidden files and names
  starting with ``_``, such as ``_SUCCESS``, skipped); a file of another kind is an error.
Every source under a folder is named by the folder (the parts of one corpus), whatever its
files are called. The name is the default trait and dataset (``--trait``/``--dataset`` override).

An argument that is not on this machine and looks like a Hugging Face dataset id
(``owner/name``) is refused at once with the commands that save a local copy: traitlens never
downloads.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

from traitlens.pipeline.capture.corpus import SPLITS, CorpusError

from .streams import compression_of, format_suffix, stem

KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "txt",
         ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow", ".arrows": "arrow"}
COLUMNAR = {"parquet", "arrow"}  # they compress inside: a .parquet.gz is refused
ACCEPTED = ".jsonl, .ndjson, .json, .csv, .tsv, .txt (each also .gz or .zst), .parquet, .arrow, .feather"
HUB_ID = re.compile(r"^(?:hf://datasets/)?([A-Za-z0-9][\w.-]*/[\w.-]+)$")


@dataclass(frozen=True)
class Source:
    """One file to read (or one trait folder, ``kind == "traits"``)."""

    path: Path
    kind: str  # jsonl | json | csv | tsv | txt | parquet | arrow | traits
    name: str  # the default trait and dataset
    split: str | None = None  # train | val | test: a DatasetDict's split, the records' own


def kind_of(path: Path) -> str:
    """The format of a corpus file from its name, or a :class:`CorpusError` saying what is accepted."""
    suffix = format_suffix(path)
    kind = KINDS.get(suffix)
    if kind is None:
        raise CorpusError(path, None, None, f"unknown corpus type {Path(path).name!r}",
                          f"use {ACCEPTED}, or a folder (datasets save_to_disk, Parquet parts, "
                          "positive.txt/negative.txt)")
    if kind in COLUMNAR and compression_of(path):
        raise CorpusError(path, None, None, f"a compressed {kind} file",
                          f"{kind} files compress inside: decompress it first (e.g. gunzip / zstd -d)")
    return kind


def hub_id_error(arg: str) -> CorpusError:
    """Exit 2 with the two commands that fetch a hub dataset and save it where traitlens reads it."""
    repo = HUB_ID.match(arg).group(1)
    folder = repo.split("/")[-1]
    return CorpusError(arg, None, None,
                       "not a file or folder on this machine. It looks like a Hugging Face dataset id; traitlens "
                       "reads local copies only and never downloads. Save a copy, then ingest the folder:\n"
                       f"  python -c \"from datasets import load_dataset; load_dataset('{repo}')"
                       f".save_to_disk('{folder}')\"\n"
                       f"  traitlens ingest {folder}")


def _looks_like_hub_id(arg: str, p: Path) -> bool:
    """``owner/name`` (or ``hf://datasets/owner/name``) with no local folder ``owner`` and no
    corpus file suffix: a missing ``data/x.jsonl`` is a missing file, not a hub id."""
    if not HUB_ID.match(arg):
        return False
    return arg.startswith("hf://") or (not p.parent.exists() and format_suffix(p) not in KINDS)


def regular(path: Path) -> Path:
    """``path``, a folder or a regular file; a FIFO, socket or device is refused before it is
    opened. A corpus is read more than once (hashed for its receipt, then validated): a pipe
    would be empty the second time, and opening a FIFO whose writer has gone waits forever."""
    import stat

    mode = path.stat().st_mode
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return path
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise CorpusError(path, None, None, f"is {kind}; a corpus is read more than once (hashed, then validated), "
                      "so it must be a regular file", "write the stream to a file first, e.g. "
                      "`cat source > corpus.jsonl`, and ingest that")


def resolve(paths) -> list[Path]:
    """The corpus arguments as existing paths: globs expanded (sorted), each path checked (a
    folder or a regular file: :func:`regular`)."""
    out: list[Path] = []
    for arg in map(str, paths):
        p = Path(arg).expanduser()
        if p.exists():
            out.append(regular(p))
        elif glob.has_magic(arg):
            hits = sorted(regular(Path(h)) for h in glob.glob(str(p), recursive=True))
            if not hits:
                raise CorpusError(arg, None, None, "the glob matches no file", "check the pattern (quote it so "
                                  "the shell does not expand it first)")
            out += hits
        elif _looks_like_hub_id(arg, p):
            raise hub_id_error(arg)
        else:
            raise CorpusError(p, None, None, "no such file or folder")
    return out


def expand(paths) -> list[Source]:
    """Every source of the corpus arguments, in reading order."""
    return [s for p in resolve(paths) for s in _sources(p, None)]


def _sources(path: Path, name: str | None) -> list[Source]:
    if not path.is_dir():
        return [Source(path, kind_of(path), name or stem(path))]
    name = name or path.name
    if (path / "dataset_dict.json").is_file():
        return _dataset_dict(path, name)
    if (path / "state.json").is_file() and any(path.glob("*.arrow")):
        return _dataset_folder(path, name, None)
    if _is_trait_folder(path):
        return [Source(path, "traits", name)]
    found = []
    for child in sorted(path.iterdir()):
        if child.name.startswith((".", "_")):
            continue
        if child.is_dir():
            found += _sources(child, name)
        elif child.name in ("dataset_info.json", "state.json"):  # a datasets folder missing its shards
            raise CorpusError(child, None, None, "a datasets metadata file without its .arrow shards",
                              "pass the whole save_to_disk folder")
        else:
            found.append(Source(regular(child), kind_of(child), name))
    if not found:
        raise CorpusError(path, None, None, "folder holds no corpus file",
                          f"put {ACCEPTED} files in it, or positive.txt/negative.txt")
    return found


def _is_trait_folder(path: Path) -> bool:
    """A trait folder (positive.txt / negative.txt, or one `traitlens generate` wrote) here or in
    a tree of sub-folders (as :mod:`..trait_folders` finds them; :mod:`..corpus` reads them)."""
    from traitlens.pipeline.capture.trait_folders import GENERATED_MARK, folder_kind, trait_folders

    if (path / GENERATED_MARK).is_file():  # a generate folder, finished or not: never a folder of files
        return True
    return folder_kind(path) is not None or any(
        trait_folders(c) for c in path.iterdir() if c.is_dir() and not c.name.startswith((".", "_")))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(path, None, None, f"cannot read this datasets metadata file ({e})",
                          "save the dataset again with save_to_disk") from None
    if not isinstance(data, dict):
        raise CorpusError(path, None, None, "not a datasets metadata file (expected a JSON object)")
    return data


def _dataset_folder(path: Path, name: str, split: str | None) -> list[Source]:
    """A ``save_to_disk`` folder: its shards in ``state.json`` order (``save_to_disk`` writes a
    shuffled or selected dataset's rows in their final order, so no index file is applied)."""
    state = _read_json(path / "state.json")
    files = [f.get("filename") for f in state.get("_data_files", []) if isinstance(f, dict)]
    if not files or not all(isinstance(f, str) for f in files):
        raise CorpusError(path / "state.json", None, "_data_files", "lists no Arrow shard",
                          "save the dataset again with save_to_disk")
    out = []
    for f in files:
        shard = path / f
        if not shard.is_file():
            raise CorpusError(shard, None, None, "a shard that state.json lists is missing",
                              "copy the whole save_to_disk folder again")
        out.append(Source(shard, "arrow", name, split))
    return out


def _dataset_dict(path: Path, name: str) -> list[Source]:
    """A ``DatasetDict`` folder: each split in the order ``dataset_dict.json`` lists them."""
    splits = _read_json(path / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise CorpusError(path / "dataset_dict.json", None, "splits", "lists no split",
                          "save the dataset again with save_to_disk")
    out = []
    for s in splits:
        folder = path / s
        if not (folder / "state.json").is_file():
            raise CorpusError(folder, None, None, f"split {s!r} of the DatasetDict is missing",
                              "copy the whole save_to_disk folder again")
        out += _dataset_folder(folder, name, SPLITS.get(s.strip().lower()))
    return out
