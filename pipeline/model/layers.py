"""Layer selections (``all``, ``0-15``, ``3,7,11``, ``-1``), free of torch so that extraction
workers never import it (torch alone is ~180 MB of resident memory)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from traitlens.store.errors import InputError
from traitlens.store.layout import format_layer_list


class SiteError(InputError):
    """A site or layer cannot be resolved on this model."""


def parse_layers(spec: str | int | Sequence[int | str], n_layers: int) -> list[int]:
    """``all`` | ``0-15`` | ``3,7,11`` | ``-1`` (negative counts from the end) -> sorted layers."""
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, (list, tuple)):
        items = [str(x) for x in spec]
    else:
        spec = str(spec).strip().lower()
        if spec in ("all", ""):
            return list(range(n_layers))
        items = [x.strip() for x in spec.split(",") if x.strip()]
    out: set[int] = set()
    for item in items:
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", item) if not re.fullmatch(r"-\d+", item) else None
        try:
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                rng: Sequence[int] = range(a % n_layers if a < 0 else a, (b % n_layers if b < 0 else b) + 1)
            else:
                v = int(item)
                rng = [v % n_layers if v < 0 else v]
        except ValueError:
            raise SiteError(f"--layers {spec!r}: {item!r} is not a layer; use all, 0-15 or 3,7,11") from None
        for v in rng:
            if not 0 <= v < n_layers:
                raise SiteError(f"--layers {spec!r}: layer {v} does not exist; the model has layers 0-{n_layers - 1}")
            out.add(v)
    if not out:
        raise SiteError(f"--layers {spec!r} selects no layer")
    return sorted(out)


format_layers = format_layer_list  # display form of a layer list, ``0-2,5,7-8`` (lives in the store: no torch)
