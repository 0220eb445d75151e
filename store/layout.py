"""Keys and paths of a traitlens store.

A store is a folder::

    <root>/store.json                                   format name and version
    <root>/activations.zarr/<model_key>/<fmt>/<site>/<pooling>/L<layer>   [n_rows, d_model]
    <root>/activations.zarr/<model_key>/<fmt>/<site>/tokens/token_ids     [n_tokens] (tokens pooling)
    <root>/tables/<table>/part-*.parquet                append-only parts (table names: vocabulary.py)
    <root>/tables/<table>/base-*.parquet, _manifest.json   compacted parts and which are live (manifest.py)

``fmt`` is how prompts were rendered for the model (``chat`` or ``raw``): the same text gives
different activations with and without a chat template, so the two never share an array.
Every name that becomes a path component goes through :func:`safe_name`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import TraitlensError
from .vocabulary import FORMATS, POOLINGS

FORMAT_NAME = "traitlens-store"
FORMAT_VERSION = 2  # 2: tables may be compacted (a manifest and base-* parts; see manifest.py)
READABLE_VERSIONS = (1, 2)  # a version-1 store is read as it is and becomes version 2 when first compacted

ZARR_DIR = "activations.zarr"
TABLES_DIR = "tables"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class StoreError(TraitlensError, RuntimeError):
    """A store is missing, of another format, or inconsistent; the message says what to do."""


def safe_name(name: str, field: str = "name") -> str:
    """Turn ``name`` into one path component: no separators, no ``..``, no empty string.

    Characters outside ``[A-Za-z0-9._+-]`` become ``_``, so ``gpt2/../../etc`` can never
    leave the store. Raises ``ValueError`` when nothing usable is left.
    """
    cleaned = _UNSAFE.sub("_", str(name)).strip("._")
    if not cleaned:
        raise ValueError(f"{field} {name!r} has no usable characters for a store path")
    return cleaned[:120]


def file_stem(name: str, field: str = "name") -> str:
    """A file-name stem for any name (a trait from a corpus may be ``..`` or ``/``): its
    :func:`safe_name`, or a short hash of it when nothing usable is left. Never raises."""
    try:
        return safe_name(name, field)
    except ValueError:
        import hashlib

        return f"{field}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"


@dataclass(frozen=True, order=True)
class GroupKey:
    """One family of arrays sharing row indices: every layer of (model, fmt, site, pooling)."""

    model_key: str
    fmt: str
    site: str
    pooling: str

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for field in ("model_key", "site"):
            value = getattr(self, field)
            if safe_name(value, field) != value:
                raise ValueError(f"{field} {value!r} is not a safe store name; use safe_name()")

    @property
    def path(self) -> str:
        """Zarr group path relative to ``activations.zarr``."""
        return f"{self.model_key}/{self.fmt}/{self.site}/{self.pooling}"

    def as_dict(self) -> dict[str, str]:
        return {"model_key": self.model_key, "fmt": self.fmt, "site": self.site, "pooling": self.pooling}


def layer_name(layer: int) -> str:
    """Array name of one layer inside a group: ``L7``."""
    return f"L{int(layer)}"


def format_layer_list(layers: Iterable[int | str]) -> str:
    """Layers for display: ``[0, 1, 2, 5, 7, 8]`` -> ``0-2,5,7-8`` (the ``--layers`` syntax)."""
    out: list[str] = []
    run: list[int] = []
    for l in sorted(set(int(x) for x in layers)):
        if run and l != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(l)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_layer_name(name: str) -> int | None:
    """Inverse of :func:`layer_name`; ``None`` for other members (``token_ids``)."""
    m = re.fullmatch(r"L(\d+)", name)
    return int(m.group(1)) if m else None
