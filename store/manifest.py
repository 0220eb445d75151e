"""Which Parquet files make up a table: its compaction manifest plus the parts appended since.

A table folder holds::

    part-<time_ns>-<rand>.parquet   one per append (tables.write_part), oldest first by name
    base-<gen>-<rand>.parquet       written by compaction: the rows of several earlier files, in order
    _manifest.json                  written only by compaction, atomically (the switch)

``_manifest.json``::

    {"format": "traitlens-table-manifest", "version": 1, "table": "rows", "generation": 7,
     "bases":   [{"name": "base-000007-....parquet", "rows": 1000000, "tier": 1, "generation": 7,
                  "digest": "<hex: which appended parts it absorbed>"}, ...],
     "retired": [{"name": "part-....parquet", "generation": 7, "at": 1764590000.0}, ...]}

A table's live files, in row order, are the manifest's ``bases`` followed by every ``part-*``
in the folder that the manifest does not retire. A base that the manifest does not name is
invisible: an interrupted compaction's output (``verify --repair`` deletes it: rolled back) or
an older generation awaiting deletion. A retired file is invisible too; it stays on disk for
:data:`RETIRE_GRACE_S` so that a reader holding the previous snapshot can still open it, then
the next compaction (or ``verify --repair``) deletes it.

Readers list the folder *first* and read the manifest *second*. A compaction writes its base,
then swaps the manifest, then (after the grace) deletes what it retired, so whichever manifest
a reader reads, every file it names was written before it and is still there: a reader sees
the old files or the new, never both and never neither.

Every base also records in its own Parquet footer (key ``traitlens.compaction``) its
generation, tier and the files it replaces, so a lost or damaged manifest is rebuilt from the
bases themselves (:func:`rebuild`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .layout import StoreError
from .location import StorePath, list_folder, write_atomically

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "traitlens-table-manifest"
FOOTER_KEY = b"traitlens.compaction"
RETIRE_GRACE_S = 600.0  # how long a retired file outlives the manifest that retired it


def name_digest(name: str) -> int:
    """One appended part's share of a table's content digest."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "big")


def combine(digests: Iterable[int]) -> int:
    """Digests of disjoint sets of appended parts combined (a sum mod 2**128: order-free, so a
    base's digest is the combination of the parts it absorbed, and compaction keeps it)."""
    return sum(digests) % (1 << 128)


def retire_grace() -> float:
    """Seconds a retired file is kept for readers of the previous snapshot
    (``TRAITLENS_COMPACT_GRACE`` overrides :data:`RETIRE_GRACE_S`)."""
    return float(os.environ.get("TRAITLENS_COMPACT_GRACE", RETIRE_GRACE_S))


@dataclass
class Manifest:
    table: str
    generation: int = 0
    bases: list[dict[str, Any]] = field(default_factory=list)  # {"name", "rows", "tier", "generation", "digest"}, in row order
    retired: list[dict[str, Any]] = field(default_factory=list)  # {"name", "generation", "at"}

    @property
    def retired_names(self) -> set[str]:
        return {str(r["name"]) for r in self.retired}

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, "version": 1, "table": self.table,
                           "generation": self.generation, "bases": self.bases, "retired": self.retired}, indent=1)


@dataclass
class Snapshot:
    """One consistent view of a table folder."""

    table_dir: StorePath
    manifest: Manifest | None
    listed: list[str]  # every part-* and base-* name in the folder when it was listed, sorted

    @property
    def bases(self) -> list[StorePath]:
        return [self.table_dir / b["name"] for b in (self.manifest.bases if self.manifest else [])]

    @property
    def appended(self) -> list[StorePath]:
        """Appended parts not retired by the manifest, oldest first."""
        retired = self.manifest.retired_names if self.manifest else set()
        return [self.table_dir / n for n in self.listed if n.startswith("part-") and n not in retired]

    @property
    def live(self) -> list[StorePath]:
        return self.bases + self.appended

    def digest(self) -> str:
        """Which appended parts' rows this snapshot holds, as hex: unchanged by compaction (a base
        carries the digest of what it absorbed), changed by every append or lost part."""
        listed = set(self.listed)
        bases = [int(b["digest"], 16) for b in self.manifest.bases if b["name"] in listed] if self.manifest else []
        return f"{combine([name_digest(p.name) for p in self.appended] + bases):032x}"

    @property
    def orphans(self) -> list[StorePath]:
        """Bases on disk that the manifest neither names nor retires: an interrupted compaction's output."""
        named = ({b["name"] for b in self.manifest.bases} | self.manifest.retired_names) if self.manifest else set()
        return [self.table_dir / n for n in self.listed if n.startswith("base-") and n not in named]

    def retired_present(self, older_than: float | None = None) -> list[StorePath]:
        """Retired files still on disk (only those retired more than ``older_than`` seconds ago)."""
        if self.manifest is None:
            return []
        listed, now = set(self.listed), time.time()
        return [self.table_dir / r["name"] for r in self.manifest.retired if r["name"] in listed
                and (older_than is None or now - float(r.get("at", 0)) >= older_than)]


def list_names(table_dir: StorePath) -> list[str]:
    """Names of the table's part-* and base-* files, sorted (from one listing)."""
    return sorted(n for n in list_folder(table_dir) if n.endswith(".parquet") and n.startswith(("part-", "base-")))


def read_manifest(table_dir: StorePath) -> Manifest | None:
    """The table's manifest, None if it has none; a damaged one is a :class:`StoreError`."""
    path = table_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        return Manifest(table=str(raw["table"]), generation=int(raw["generation"]),
                        bases=[{"name": str(b["name"]), "rows": int(b["rows"]), "tier": int(b.get("tier", 0)),
                                "generation": int(b.get("generation", 0)), "digest": str(b["digest"])}
                               for b in raw["bases"]],
                        retired=[{"name": str(r["name"]), "generation": int(r.get("generation", 0)),
                                  "at": float(r.get("at", 0))} for r in raw.get("retired", [])])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StoreError(f"{path} is damaged ({type(e).__name__}: {str(e)[:120]}); run `traitlens verify --repair` "
                         "(it rebuilds the manifest from the compacted parts' own footers)") from None


def snapshot(table_dir: StorePath) -> Snapshot:
    """List the folder, then read the manifest (this order is what makes a snapshot consistent)."""
    listed = list_names(table_dir)
    manifest = read_manifest(table_dir)
    if manifest is None and any(n.startswith("base-") for n in listed):
        raise StoreError(f"{table_dir / MANIFEST_NAME} is missing but the table holds compacted parts (base-*): "
                         "without it retired parts would be read twice; run `traitlens verify --repair` to rebuild it")
    return Snapshot(table_dir, manifest, listed)


def write_manifest(table_dir: StorePath, manifest: Manifest) -> None:
    """Replace the manifest atomically: the switch between two generations."""
    data = manifest.to_json().encode()
    write_atomically(table_dir / MANIFEST_NAME, lambda f: f.write(data))


def footer_record(generation: int, tier: int, replaces: list[str], digest: str) -> dict[bytes, bytes]:
    """The key-value metadata a base carries about itself."""
    return {FOOTER_KEY: json.dumps({"generation": generation, "tier": tier, "replaces": replaces,
                                    "digest": digest}).encode()}


def rebuild(table_dir: StorePath, table: str,
            read_footer: Callable[[StorePath], tuple[dict[str, Any] | None, int]]) -> Manifest:
    """A manifest rebuilt from the bases' footers (``read_footer(path) -> (dict | None, rows)``;
    None for a base whose footer does not read). Each readable base that no other readable
    base replaces is live, ordered by generation (a base only ever absorbs older rows); every
    file a live base replaces is retired."""
    listed = list_names(table_dir)
    info: dict[str, tuple[dict[str, Any], int]] = {}
    for n in listed:
        if n.startswith("base-"):
            meta, rows = read_footer(table_dir / n)
            if meta is not None:
                info[n] = (meta, rows)
    replaced = {r for meta, _ in info.values() for r in meta.get("replaces", [])}
    live = sorted((n for n in info if n not in replaced), key=lambda n: (info[n][0].get("generation", 0), n))
    now = time.time()
    retired = [{"name": n, "generation": info[b][0].get("generation", 0), "at": now}
               for b in live for n in info[b][0].get("replaces", []) if n in listed]
    gen = int(max([info[n][0].get("generation", 0) for n in info] or [0]))
    return Manifest(table, gen, [{"name": n, "rows": info[n][1], "tier": int(info[n][0].get("tier", 0)),
                                  "generation": int(info[n][0].get("generation", 0)),
                                  "digest": str(info[n][0].get("digest", f"{name_digest(n):032x}"))} for n in live],
                    retired)
