"""The one rule for numbers a user gives and vectors traitlens stores: finite, or refused.

NaN passes every range check (``nan < 0`` and ``nan > 0`` are both false) and infinity passes
a lower bound, so each float a command, a workflow spec or a formula takes goes through
:func:`check_float` (the CLI's ``FiniteFloat`` parameter type wraps it): not a number, not
finite, out of its range, zero where zero means nothing, or too large for float32 (the
activations' and vectors' type, where 1e308 becomes infinity) is an :class:`InputError`
naming the option. :func:`vector_problem` is the matching rule for a stored direction: every
value finite and not all zero, or it is never written, picked, scored, steered with or exported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38: larger magnitudes are inf in float32


def check_float(value: Any, name: str, **bounds: Any) -> float:
    """``value`` (a number or its text) as a finite float within ``bounds`` (those of
    :func:`float_problem`), else an :class:`InputError` naming ``name`` (an option like
    ``--alpha`` or a spec key) and the value."""
    x, problem = float_problem(value, **bounds)
    if problem is not None:
        raise InputError(f"{name} {str(value)[:40]}: {problem}")
    return x


def float_problem(value: Any, *, min: float | None = None, max: float | None = None, min_open: bool = False,
                  max_open: bool = False, nonzero: bool = False, float32: bool = False) -> tuple[float, str | None]:
    """``(value as a float, why it is refused or None)``.

    ``float32``: also refuse magnitudes float32 cannot hold (they become infinity when they
    meet activations or vectors); ``nonzero``: refuse 0 (a scale of 0 writes zeros)."""
    if isinstance(value, bool):
        return math.nan, "give a number"
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan, "not a number"
    if not math.isfinite(x):
        return x, "must be a finite number (NaN and infinities are refused)"
    if float32 and abs(x) > FLOAT32_MAX:
        return x, f"too large for float32 (at most {FLOAT32_MAX:.3g} in magnitude), where it would become infinity"
    if nonzero and x == 0:
        return x, "must not be zero (it would make every value 0)"
    if min is not None and (x < min or (min_open and x == min)):
        return x, f"must be {'above' if min_open else 'at least'} {min:g}"
    if max is not None and (x > max or (max_open and x == max)):
        return x, f"must be {'below' if max_open else 'at most'} {max:g}"
    return x, None


def vector_problem(values: npt.ArrayLike) -> str | None:
    """Why a direction ``[d]`` cannot be stored or used (non-finite or all-zero values), or None."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return "it has no values"
    bad = int(np.count_nonzero(~np.isfinite(v)))
    if bad:
        return f"{bad} of its {v.size} values are NaN or infinite"
    if not np.any(v):
        return "every value is 0"
    return None
