"""One table of a store, and the one way to reach its files: ``store.tables[name]``.

    t = store.tables["vectors"]   # a Table
    t.append(rows)                # one atomic part, then a compaction if one is due
    t.read(columns, filter)       # every committed row, as Arrow
    t.live_files()                # the files a reader reads now, in row order
    t.compact(full=True)          # merge its files (under the store's writer lock)

``Store.append`` and ``Store.table`` are this facade's face on the store; the modules under it
each keep one job: :mod:`.tables` the schemas and the part files, :mod:`.manifest` which files
are live, :mod:`.compaction` the merging, :mod:`.location` what the storage can do.

The append path, end to end::

    Store.append(name, rows) -> Table.append
      tables.rows_to_table, tables.write_part
        location.make_folder, location.write_atomically        the part lands whole, or not at all
      Table.compact_if_due                                     only while this process holds the lock
        compaction.compact_table
          manifest.snapshot                                    list the folder, then read the manifest
          compaction._plan                                     not due: delete retired files past their grace
          compaction._write_base -> location.write_atomically  the merged base lands whole
          manifest.write_manifest -> location.write_atomically the switch: readers see the base from here
          compaction.delete_retired
"""

from __future__ import annotations

import warnings

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from . import compaction, manifest, tables
from .layout import TABLES_DIR, StoreError
from .location import StorePath
from .lock import holds_lock


class Table:
    """The table ``name`` of the store at ``root`` (its folder ``tables/<name>`` and its schema)."""

    def __init__(self, root: StorePath, name: str) -> None:
        self.root, self.name = root, name
        self.dir = root / TABLES_DIR / name
        self.schema: pa.Schema = tables.SCHEMAS[name]

    def __repr__(self) -> str:
        return f"Table({self.name!r} at {self.dir})"

    def append(self, rows: list[dict[str, Any]]) -> StorePath | None:
        """Add ``rows`` (dicts; missing fields are null) as one atomic part; returns its path, None
        when there is nothing to add. Then compacts the table if due (:meth:`compact_if_due`)."""
        if not rows:
            return None
        part = tables.write_part(self.dir, tables.rows_to_table(rows, self.schema), self.schema)
        self.compact_if_due()
        return part

    def read(self, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
        """Every committed row (see :func:`.tables.read_table`: a damaged part is a
        :class:`StoreError` naming it)."""
        return tables.read_table(self.dir, self.schema, columns, filter)

    def snapshot(self) -> manifest.Snapshot:
        """One consistent view of the table's files (:func:`.manifest.snapshot`)."""
        return manifest.snapshot(self.dir)

    def live_files(self) -> list[StorePath]:
        """The files a reader reads now, in row order: the compacted bases, then the parts appended since."""
        return self.snapshot().live

    def dataset(self) -> ds.Dataset:
        """The live files as one lazily scanned ``pyarrow.dataset`` (what DuckDB scans)."""
        return tables.parts_dataset(self.live_files(), self.schema)

    def damaged_error(self, cause: BaseException) -> StoreError:
        """The one-line error for a read of this table that failed (names the damaged part)."""
        return tables.damaged_error(self.dir, self.schema, cause)

    def compact(self, full: bool = False, grace: float | None = None) -> compaction.Compacted | None:
        """Merge the table's files if due (``full``: into one); None when nothing was due. Call
        under the store's writer lock."""
        return compaction.compact_table(self.dir, self.name, self.schema, full, grace)

    def compact_if_due(self) -> compaction.Compacted | None:
        """After an append: compact if due, only while this process holds the writer lock. A
        compaction that cannot run (a damaged part, a full disk) warns and leaves the table as it
        was: the append it follows has already landed."""
        if not holds_lock(self.root):
            return None
        try:
            return self.compact()
        except (StoreError, OSError) as e:
            warnings.warn(f"compaction of tables/{self.name} skipped: {e}", RuntimeWarning, stacklevel=3)
            return None
