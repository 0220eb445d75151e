"""Temporal dynamics: derivatives on known polynomials, padding, batch axis, geometry, commitment."""

from __future__ import annotations

import numpy as np
import pytest

from traitlens.pipeline.steer import temporal as tp


def test_derivatives_of_a_quadratic_are_exact():
    t = np.arange(12) * 0.5  # dt = 0.5
    p = 3 * t**2 + 2 * t + 1
    np.testing.assert_allclose(tp.derivative(p, dt=0.5), 6 * t + 2, atol=1e-9)
    np.testing.assert_allclose(tp.derivative(p, dt=0.5, order=2), np.full_like(t, 6.0), atol=1e-9)


def test_hidden_state_velocity_is_the_projection_derivative():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(8)
    u = v / np.linalg.norm(v)
    t = np.arange(10.0)
    H = rng.standard_normal((10, 8))
    H = H - np.outer(H @ u, u) + np.outer(t**2 - t, u)  # projection = t^2 - t exactly
    np.testing.assert_allclose(tp.projection(H, v), t**2 - t, atol=1e-9)
    np.testing.assert_allclose(tp.velocity(H, v), 2 * t - 1, atol=1e-9)
    np.testing.assert_allclose(tp.acceleration(H, v), np.full(10, 2.0), atol=1e-9)
    norm = tp.velocity(H, v, normalise=True)
    np.testing.assert_allclose(norm, (2 * t - 1) / np.linalg.norm(H, axis=1).mean(), atol=1e-9)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_masks_and_batch_axis(side):
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((n, 6)) for n in (7, 4, 9)]
    v = rng.standard_normal(6)
    T = 9
    H = np.full((3, T, 6), 1e6)  # garbage in padding must not leak
    mask = np.zeros((3, T), dtype=bool)
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        H[b, sl], mask[b, sl] = s, True
    vel = tp.velocity(H, v, mask)
    acc = tp.acceleration(H, v, mask)
    ang = tp.angular_velocity(H, mask)
    for b, s in enumerate(seqs):
        np.testing.assert_allclose(vel[b][mask[b]], tp.velocity(s, v), atol=1e-9)  # same as alone
        np.testing.assert_allclose(acc[b][mask[b]], tp.acceleration(s, v), atol=1e-9)
        np.testing.assert_allclose(ang[b][mask[b]], tp.angular_velocity(s), atol=1e-9, equal_nan=True)
        assert np.isnan(vel[b][~mask[b]]).all()
    # differentiating along the batch axis would mix sequences: results must not depend on order
    perm = [2, 0, 1]
    np.testing.assert_allclose(tp.velocity(H[perm], v, mask[perm]), vel[perm], equal_nan=True)


def test_angular_and_radial_velocity():
    theta, r = 0.1, 2.0 + np.arange(8) * 0.5
    H = np.stack([r * np.cos(theta * np.arange(8)), r * np.sin(theta * np.arange(8)), np.zeros(8)], axis=1)
    ang = tp.angular_velocity(H)
    assert np.isnan(ang[0])
    np.testing.assert_allclose(ang[1:], theta, atol=1e-9)
    np.testing.assert_allclose(tp.radial_velocity(H), np.full(8, 0.5), atol=1e-9)


def test_smoothing_and_cosine():
    x = np.array([0.0, 3.0, 0.0, 3.0, 0.0])
    np.testing.assert_allclose(tp.smooth(x, 3), [1.5, 1.0, 2.0, 1.0, 1.5])
    H = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(tp.cosine(H, [1.0, 0.0]), [1.0, 1 / np.sqrt(2)])


def test_commitment_point():
    rise = np.r_[np.linspace(0, 5, 6), np.full(8, 5.0)]  # climbs to 5 by token 5, then flat
    assert tp.commitment_point(rise, threshold=4.0, velocity_tol=0.1) == 6  # velocity at 5 still shows the climb
    assert tp.commitment_point(rise, threshold=6.0, velocity_tol=0.1) is None
    wobble = rise.copy()
    wobble[10] = 3.0  # dips below the threshold later: commitment only after the dip settles
    assert tp.commitment_point(wobble, threshold=4.0, velocity_tol=0.1) == 12
    down = -rise
    assert tp.commitment_point(down, threshold=-4.0, velocity_tol=0.1, direction="below") == 6
    # batched, left padded: index counts padding
    batch = np.full((2, 16), np.nan)
    mask = np.zeros((2, 16), dtype=bool)
    batch[0, 2:], mask[0, 2:] = rise, True
    batch[1, 2:], mask[1, 2:] = rise * 0.5, True
    np.testing.assert_array_equal(tp.commitment_point(batch, 4.0, 0.1, mask=mask), [8, -1])
