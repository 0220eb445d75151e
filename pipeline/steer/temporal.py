"""Per-token dynamics of a trait along the sequence (token) axis.

Shapes: a trajectory is ``[T, d]`` (one sequence) or ``[B, T, d]`` (a batch) with an optional
bool ``mask`` ``[T]`` / ``[B, T]`` marking real tokens. Every derivative runs along the token
axis (axis -2 of hidden states, axis -1 of scalar series) — never the batch axis — and masked
positions never leak into real ones: their outputs are NaN.

Definitions (``x_t`` hidden state at token t, ``v`` unit trait vector, ``dt`` token spacing):
- projection ``p_t = x_t · v``; cosine ``c_t = x_t · v / |x_t|``;
- velocity ``p'_t`` and acceleration ``p''_t``: central finite differences of ``p`` (second-order
  one-sided at the ends of each sequence's real tokens), divided by ``dt`` and ``dt**2``; with
  ``normalise=True`` the series is first divided by the mean |x_t| of its sequence, so one
  threshold fits every layer and model;
- radial velocity ``d|x_t|/dt`` and angular velocity ``arccos(x_t·x_{t-1} / |x_t||x_{t-1}|) / dt``
  (radians per token; NaN at a sequence's first token);
- smoothing: a centred moving average over ``window`` real tokens;
- commitment point: the first token t such that for every later real token s >= t,
  ``p_s`` stays past ``threshold`` (above, or below when ``threshold`` < 0 with
  ``direction='below'``) and ``|p'_s| <= velocity_tol``: after it the trait no longer moves.
"""

from __future__ import annotations

import numpy as np


def _as_batch(x: np.ndarray, mask: np.ndarray | None, scalar: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x with a batch axis, bool mask [B, T], whether a batch axis was added)."""
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == (1 if scalar else 2)
    if single:
        x = x[None]
    T = x.shape[1]
    if mask is None:
        m = np.ones(x.shape[:2], dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        m = m[None] if m.ndim == 1 else m
        if m.shape != x.shape[:2]:
            raise ValueError(f"mask {m.shape} does not match the batch/token axes {x.shape[:2]}")
    if T == 0:
        raise ValueError("empty trajectory")
    return x, m, single


def _unbatch(y: np.ndarray, single: bool) -> np.ndarray:
    return y[0] if single else y


def projection(hidden: np.ndarray, vector: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``p_t = x_t · v`` for unit ``v``: ``[T]`` or ``[B, T]``; NaN where masked."""
    x, m, single = _as_batch(hidden, mask, scalar=False)
    v = np.asarray(vector, dtype=np.float64)
    v = v / np.linalg.norm(v)
    p = np.where(m, x @ v, np.nan)
    return _unbatch(p, single)


def cosine(hidden: np.ndarray, vector: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``x_t · v / (|x_t| |v|)``: ``[T]`` or ``[B, T]``; NaN where masked."""
    x, m, single = _as_batch(hidden, mask, scalar=False)
    v = np.asarray(vector, dtype=np.float64)
    c = (x @ v) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(v) + 1e-30)
    return _unbatch(np.where(m, c, np.nan), single)


def _diff_one(y: np.ndarray, dt: float) -> np.ndarray:
    """First derivative of one contiguous series [n]: central differences inside, second-order
    one-sided ones at the ends (exact for quadratics everywhere); NaN for a single token."""
    if len(y) < 2:
        return np.full_like(y, np.nan)
    return np.gradient(y, dt, edge_order=2 if len(y) >= 3 else 1)


def derivative(series: np.ndarray, mask: np.ndarray | None = None, dt: float = 1.0, order: int = 1) -> np.ndarray:
    """d^order series / dt^order along the token axis, per sequence, over real tokens only.

    ``series`` ``[T]`` or ``[B, T]``; real tokens of a row are its masked-in positions, taken in
    order (left or right padding alike). Returns the same shape, NaN where masked.
    """
    if order not in (1, 2):
        raise ValueError("order must be 1 or 2")
    y, m, single = _as_batch(series, mask, scalar=True)
    out = np.full_like(y, np.nan)
    for b in range(y.shape[0]):
        idx = np.flatnonzero(m[b])
        d = _diff_one(y[b, idx], dt)
        if order == 2:
            d = _diff_one(d, dt)
        out[b, idx] = d
    return _unbatch(out, single)


def normalised(series: np.ndarray, hidden: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``series`` divided by each sequence's mean |x_t| over real tokens (unit-free)."""
    x, m, single = _as_batch(hidden, mask, scalar=False)
    s, _, _ = _as_batch(series, mask, scalar=True)
    norms = np.linalg.norm(x, axis=-1)
    scale = np.array([norms[b, m[b]].mean() for b in range(x.shape[0])])[:, None]
    return _unbatch(s / scale, single)


def velocity(hidden, vector, mask=None, dt: float = 1.0, normalise: bool = False) -> np.ndarray:
    """Rate of change of the projection per token: ``[T]`` / ``[B, T]``."""
    p = projection(hidden, vector, mask)
    if normalise:
        p = normalised(p, hidden, mask)
    return derivative(p, mask, dt, 1)


def acceleration(hidden, vector, mask=None, dt: float = 1.0, normalise: bool = False) -> np.ndarray:
    """Second derivative of the projection along tokens."""
    p = projection(hidden, vector, mask)
    if normalise:
        p = normalised(p, hidden, mask)
    return derivative(p, mask, dt, 2)


def radial_velocity(hidden, mask=None, dt: float = 1.0) -> np.ndarray:
    """``d|x_t|/dt`` along tokens."""
    x, m, single = _as_batch(hidden, mask, scalar=False)
    r = np.where(m, np.linalg.norm(x, axis=-1), np.nan)
    return _unbatch(derivative(r, m, dt, 1), single)


def angular_velocity(hidden, mask=None, dt: float = 1.0) -> np.ndarray:
    """Angle between consecutive real tokens' states, radians per token (NaN at the first)."""
    x, m, single = _as_batch(hidden, mask, scalar=False)
    out = np.full(x.shape[:2], np.nan)
    for b in range(x.shape[0]):
        idx = np.flatnonzero(m[b])
        if len(idx) < 2:
            continue
        a, c = x[b, idx[1:]], x[b, idx[:-1]]
        cos = np.sum(a * c, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1) + 1e-30)
        out[b, idx[1:]] = np.arccos(np.clip(cos, -1.0, 1.0)) / dt
    return _unbatch(out, single)


def smooth(series: np.ndarray, window: int = 3, mask: np.ndarray | None = None) -> np.ndarray:
    """Centred moving average over ``window`` real tokens (shorter at the ends)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    y, m, single = _as_batch(series, mask, scalar=True)
    out = np.full_like(y, np.nan)
    h = window // 2
    for b in range(y.shape[0]):
        idx = np.flatnonzero(m[b])
        vals = y[b, idx]
        out[b, idx] = [np.mean(vals[max(0, i - h): i + h + 1]) for i in range(len(vals))]
    return _unbatch(out, single)


def commitment_point(series: np.ndarray, threshold: float, velocity_tol: float, mask: np.ndarray | None = None,
                     direction: str = "above", dt: float = 1.0) -> np.ndarray | int | None:
    """First token index after which ``series`` stays past ``threshold`` with |velocity| <= tol.

    Returns an int (or None when it never commits) for ``[T]``, or an int array with -1 for
    "never" for ``[B, T]``. Indices are positions in the input (padding included).
    """
    if direction not in ("above", "below"):
        raise ValueError("direction must be above or below")
    y, m, single = _as_batch(series, mask, scalar=True)
    vel = derivative(y, m, dt, 1)
    res = np.full(y.shape[0], -1)
    for b in range(y.shape[0]):
        idx = np.flatnonzero(m[b])
        past = y[b, idx] >= threshold if direction == "above" else y[b, idx] <= threshold
        calm = np.abs(np.nan_to_num(vel[b, idx], nan=np.inf)) <= velocity_tol
        ok = past & calm
        # last position where the condition fails; commitment starts right after it
        bad = np.flatnonzero(~ok)
        start = 0 if len(bad) == 0 else bad[-1] + 1
        if start < len(idx):
            res[b] = idx[start]
    if single:
        return None if res[0] < 0 else int(res[0])
    return res
