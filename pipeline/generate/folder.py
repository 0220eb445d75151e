"""The trait folder ``generate`` writes (and ``ingest DIR`` reads):

- ``definition.txt``: the trait's description (trait-interp's name for it);
- ``prompts.json``: the system-prompt pairs, the extraction and evaluation questions, the rubrics;
- ``generations.jsonl``: every answer the target gave, with the judge's scores and raw answers;
  appended to, never rewritten: a changed description or model adds lines, the old ones stay;
- ``corpus.jsonl``: the answers the judge kept, as chat records (system, user, assistant; label,
  split, source ids) for ``traitlens ingest DIR --pooling assistant_mean``;
- ``generate.json``: the settings (thresholds included), the models and the counts of the run;
- ``cache/calls.jsonl``: every model call by content (:mod:`.cache`).

A file is written only when its content changes (atomically: a temporary file renamed over it),
so a rerun with the same inputs writes nothing at all.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from traitlens.store.errors import InputError

from traitlens.pipeline.generate.jsonl import append_records, read_records

DEFINITION, PROMPTS, GENERATIONS, CORPUS, SETTINGS = ("definition.txt", "prompts.json", "generations.jsonl",
                                                       "corpus.jsonl", "generate.json")
CACHE = Path("cache") / "calls.jsonl"


class TraitFolder:
    """One trait's folder; ``check`` refuses one that belongs to another trait or to nobody."""

    def __init__(self, path, trait: str):
        self.path, self.trait = Path(path), trait

    def check(self) -> None:
        """Exit 2 (before anything is written) for a file, a folder of another trait, or a
        non-empty folder that ``generate`` did not write."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise InputError(f"-o {p}: is a file; give a folder (new, or one `generate` wrote)")
        if not p.is_dir() or not any(p.iterdir()):
            return
        settings = p / SETTINGS
        if not settings.is_file():
            raise InputError(f"-o {p}: the folder holds other files and no {SETTINGS}; give a new folder (or one "
                             "`generate` wrote for this trait)")
        try:
            have = json.loads(settings.read_text(encoding="utf-8")).get("trait")
        except (OSError, ValueError, AttributeError):
            raise InputError(f"{settings}: not a generate settings file (unreadable JSON); give a new folder") from None
        if have != self.trait:
            raise InputError(f"-o {p} holds trait {have!r}, not {self.trait!r}: give each trait its own folder")

    def claim(self) -> None:
        """Create the folder with a ``generate.json`` naming its trait (the full settings replace
        it at the end of the run), so an interrupted run's folder is known as this trait's."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / SETTINGS).is_file():
            self.write_json(SETTINGS, {"trait": self.trait})

    @property
    def cache_path(self) -> Path:
        return self.path / CACHE

    def write_if_changed(self, name: str, text: str) -> bool:
        """Write ``name`` when its content differs (temporary file, then rename); True if written."""
        target = self.path / name
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return True

    def write_json(self, name: str, data) -> bool:
        return self.write_if_changed(name, json.dumps(data, indent=1, ensure_ascii=False) + "\n")

    def write_jsonl(self, name: str, records: list[dict]) -> bool:
        return self.write_if_changed(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def append_generations(self, records: list[dict]) -> int:
        """Append the records whose ``record_id`` the file lacks; returns how many. Never rewrites
        a line: a crash mid-append leaves a torn last line, dropped before the next append."""
        path = self.path / GENERATIONS
        have = {r.get("record_id") for r in read_records(path)}
        new = [r for r in records if r["record_id"] not in have]
        append_records(path, new)
        return len(new)
