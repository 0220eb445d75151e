"""Trait folders: a folder of one trait's data, or a tree of them, as ``ingest DIR`` reads it.

Two layouts, told apart by their files:

- ``generated``: a folder ``traitlens generate`` wrote: ``corpus.jsonl`` of chat records (each
  names its trait, label and split) beside ``generate.json``;
- ``sides``: ``positive.txt`` / ``negative.txt``, one prompt a line (trait = the folder's name), as
  trait-interp lays out its traits (``datasets/traits/<category>/<trait>/``, with a
  ``definition.txt`` that the records do not need and that is left alone).

:func:`trait_folders` finds them: the folder itself when it is one, else every one below it, at
any depth, in sorted order (a trait folder's own sub-folders, such as ``generate``'s ``cache/``,
are not searched).
"""

from __future__ import annotations

from pathlib import Path

GENERATED = "corpus.jsonl"  # with generate.json: a folder `traitlens generate` wrote
GENERATED_MARK = "generate.json"
SIDES = (("positive.txt", "+1"), ("negative.txt", "-1"))


def folder_kind(path: Path) -> str | None:
    """``generated``, ``sides`` or None for a folder that holds no trait's data itself."""
    if (path / GENERATED).is_file() and (path / GENERATED_MARK).is_file():
        return "generated"
    if any((path / name).is_file() for name, _ in SIDES):
        return "sides"
    return None


def trait_folders(path: Path) -> list[tuple[Path, str]]:
    """``(folder, kind)`` for ``path`` if it is a trait folder, else for every one under it."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        return [(path, kind)]
    found = []
    for child in sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")):
        found += trait_folders(child)
    return found
