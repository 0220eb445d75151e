"""The quarantine: where ``verify --repair`` moves what it cannot prove uncommitted.

``--repair`` deletes only what it can prove no commit ever vouched for (a crash's tail above a
group's high-water mark, temporaries). Everything else it must take out of the way to make the
store consistent again — a damaged Parquet part, array rows whose rows part was lost, rows of a
store written before commit marks existed — is moved here, never deleted::

    <store>/quarantine/<UTC time>/manifest.json           what each file was, and why it is here
    <store>/quarantine/<UTC time>/tables/<table>/part-*.parquet   (also records taken out of a table)
    <store>/quarantine/<UTC time>/arrays/<group path with __>__L<k>.rows<a>-<b>.npy   [b - a, d]

Readers never look inside it (SQL's file access is the tables folder only); a person can.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .location import StorePath, make_folder, move, relative, write_atomically

QUARANTINE_DIR = "quarantine"


class Quarantine:
    """One repair's quarantine folder, created on first use."""

    def __init__(self, root: StorePath) -> None:
        self.root = root
        self.dir = root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.entries: list[dict[str, str]] = []

    def _write(self, path: StorePath, data: bytes) -> None:
        make_folder(path.parent)
        write_atomically(path, lambda f: f.write(data))

    def move_part(self, part: StorePath, table: str, why: str) -> StorePath:
        """Move a table part here (copy then delete where there are no renames); returns its new path."""
        dest = self.dir / "tables" / table / part.name
        move(part, dest)
        self._note({"file": relative(dest, self.root), "was": f"tables/{table}/{part.name}", "why": why})
        return dest

    def save_table(self, rows: pa.Table, table: str, what: str, why: str) -> StorePath:
        """Keep table rows (an Arrow table) as a Parquet file ``tables/<table>/<what>.parquet``."""
        import pyarrow.parquet as pq

        dest = self.dir / "tables" / table / f"{what}.parquet"
        buf = io.BytesIO()
        pq.write_table(rows, buf)
        self._write(dest, buf.getvalue())
        self._note({"file": relative(dest, self.root), "was": f"{rows.num_rows} rows of tables/{table}",
                    "why": why})
        return dest

    def save_rows(self, values: npt.NDArray[Any], array_path: str, start: int, why: str) -> StorePath:
        """Keep rows ``[start, start + len(values))`` of an array as an ``.npy`` file."""
        name = f"{array_path.replace('/', '__')}.rows{start}-{start + len(values)}.npy"
        dest = self.dir / "arrays" / name
        buf = io.BytesIO()
        np.save(buf, values, allow_pickle=False)
        self._write(dest, buf.getvalue())
        self._note({"file": relative(dest, self.root), "was": f"activations.zarr/{array_path} rows "
                    f"{start}-{start + len(values) - 1}", "why": why})
        return dest

    def _note(self, entry: dict[str, str]) -> None:
        self.entries.append(entry)
        self._write(self.dir / "manifest.json", json.dumps(self.entries, indent=1).encode())
