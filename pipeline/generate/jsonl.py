"""The append-only JSONL files of a trait folder (the call cache, the raw generations): read
whole, with a last line that a crash cut short dropped from the file (so the next append starts
on a line of its own); appended to in one write, flushed and fsynced."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    """Every JSON object line of ``path`` (none when it is missing); lines that are not JSON
    objects are skipped, never fatal."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):  # a torn last line
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for line in raw[:end].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def append_records(path: Path, records: list[dict]) -> None:
    """Append ``records`` durably (one write, then fsync)."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
