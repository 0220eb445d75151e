"""Strict JSON for everything traitlens writes or prints: never ``NaN`` or ``Infinity``.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which strict
parsers (JavaScript's ``JSON.parse``, jq, Go, Rust's serde) reject. Here such a value is
``null`` and the reason is said, in one of two forms:

- records (query rows, ``rank``/``vectors``/``audit`` output, dashboard answers):
  :func:`clean` and :func:`dumps` give an object holding one ``"null_reasons": {"<key>": "NaN" |
  "Infinity" | "-Infinity"}`` (what the value was: a metric that is undefined, e.g. the agreement
  of a method with no other, or a measure that overflowed); a list element has no key of its
  own, so the nearest enclosing object's reason names the list;
- documents (export and bundle cards, a weight export's card): :func:`document` gathers the
  reasons at the top, ``"nulls": {"<dotted.path>": "<why>"}``, beside the reasons the writer gives
  for the nulls it chose (``"vectors.1.steering": "not evaluated ..."``).

Then ``allow_nan=False`` holds the output to the standard.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

NULL_REASONS = "null_reasons"
NULLS = "nulls"


def _what(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _nonfinite(x: object) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def _clean(obj: Any, reasons: dict[str, str] | None, key: str | None) -> Any:
    """``obj`` with non-finite floats as None; the reason goes to ``reasons[key]`` (the
    enclosing object's record)."""
    if hasattr(obj, "item") and type(obj).__module__ == "numpy" and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # a numpy scalar
    if _nonfinite(obj):
        if reasons is not None and key is not None:
            reasons.setdefault(key, _what(obj))
        return None
    if isinstance(obj, dict):
        own: dict[str, str] = {}
        out = {k: _clean(v, own, str(k)) for k, v in obj.items()}
        if own:
            out[NULL_REASONS] = {**(out.get(NULL_REASONS) or {}), **own}
        return out
    if isinstance(obj, (list, tuple)):
        return [_clean(v, reasons, key) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # an array
        return _clean(obj.tolist(), reasons, key)
    return obj


def clean(obj: Any) -> Any:
    """``obj`` ready for strict JSON: non-finite floats are None, each with its reason (see the
    module's doc). A non-finite value at the top level, outside any object, becomes None."""
    return _clean(obj, None, None)


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kw: Any) -> str:
    """``json.dumps`` that never writes NaN or infinities (see the module's doc). ``default``
    converts what JSON cannot hold (``str`` for timestamps, as elsewhere); its results are
    cleaned too."""
    convert = (lambda o: clean(default(o))) if default is not None else None
    return json.dumps(clean(obj), default=convert, allow_nan=False, **kw)


def document(doc: dict[str, Any], note: str = "") -> dict[str, Any]:
    """``doc`` ready for strict JSON (or YAML) as one document: every non-finite float is None,
    and ``doc["nulls"]`` (kept: the reasons the writer gave for its own nulls) gains
    ``{dotted path: "not a finite number (nan)" + note}`` for each. Numpy scalars become Python's."""
    nulls = dict(doc.get(NULLS) or {})

    def walk(x: Any, path: str) -> Any:
        if hasattr(x, "item") and type(x).__module__ == "numpy" and getattr(x, "ndim", 1) == 0:
            x = x.item()
        if isinstance(x, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if _nonfinite(x):
            nulls[path] = f"not a finite number ({x}){note}"
            return None
        return x

    out: dict[str, Any] = walk({k: v for k, v in doc.items() if k != NULLS}, "")
    if nulls:
        out[NULLS] = nulls
    return out
