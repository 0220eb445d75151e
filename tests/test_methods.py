"""Estimators recover planted directions; metrics agree with independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from traitlens.testing import planted
from traitlens.pipeline.extract.methods import METHODS, ClassStats, ExtractionError, LogisticProbe, make_method
from traitlens.pipeline.extract.metrics import balanced_accuracy, best_threshold, cohens_d, projection_metrics


@pytest.mark.parametrize("name", [m for m in METHODS if m != "random"])
def test_recovers_planted_direction_with_right_sign(name):
    X, y, u = planted(3000, 32, seed=1, sep=3.0, aniso=1.0)
    est = make_method(name).fit(X, y)
    assert est.vector_ @ u > 0.95
    assert np.isclose(np.linalg.norm(est.vector_), 1.0)
    assert (X[y == 1] @ est.vector_).mean() > (X[y == -1] @ est.vector_).mean()
    # flipping the labels flips the vector: orientation follows the positives
    flipped = make_method(name).fit(X, -y)
    assert flipped.vector_ @ u < -0.95


def test_whitening_methods_find_the_optimal_discriminant_under_anisotropic_noise():
    """With noise covariance S, the best linear separator is S^-1 u, not u: probe, gradient and
    ICA should find it; pca-diff follows the dominant nuisance variance instead."""
    X, y, u = planted(4000, 32, seed=1, sep=4.0, aniso=4.0)
    S = np.cov(X[y == 1].T) / 2 + np.cov(X[y == -1].T) / 2
    target = np.linalg.solve(S, u)
    target /= np.linalg.norm(target)
    for name in ("probe", "gradient", "ica"):
        assert make_method(name).fit(X, y).vector_ @ target > 0.95, name
    assert abs(make_method("pca_diff").fit(X, y).vector_ @ u) < 0.5


def test_random_is_a_floor_not_a_direction():
    X, y, u = planted(2000, 32, seed=2)
    r = make_method("random").fit(X, y)
    assert abs(r.vector_ @ u) < 0.5
    assert (X[y == 1] @ r.vector_).mean() >= (X[y == -1] @ r.vector_).mean()  # oriented on train


def test_method_extras():
    X, y, u = planted(1500, 16, seed=3)
    md = make_method("mean_diff").extract(X[y == 1], X[y == -1])
    np.testing.assert_allclose(md["pos_mean"], X[y == 1].mean(0))
    assert np.isclose(md["raw_norm"], np.linalg.norm(X[y == 1].mean(0) - X[y == -1].mean(0)))
    ica = make_method("ica").fit(X, y)
    assert ica.info_["components"].shape[1] == 16  # the input dimension
    assert 0 <= ica.info_["chosen"] < len(ica.info_["separation_scores"])
    assert np.argmax(np.abs(ica.info_["separation_scores"])) == ica.info_["chosen"]
    probe = make_method("probe").fit(X, y)
    assert 0.9 < probe.info_["train_accuracy"] <= 1.0
    g = make_method("gradient", seed=5).fit(X, y)
    h = g.info_["loss_history"]
    assert h[-1] <= h[0] and g.info_["separation"] > 2.0
    g2 = make_method("gradient", seed=5).fit(X, y)
    np.testing.assert_array_equal(g.vector_, g2.vector_)  # seeded


def test_streaming_probe_matches_in_memory():
    X, y, u = planted(1200, 20, seed=4)
    pos = y == 1
    a = LogisticProbe().fit(X, y)
    b = LogisticProbe().fit_streaming(lambda: ((X[i:i + 100], pos[i:i + 100]) for i in range(0, len(X), 100)),
                                      ClassStats.of(X, y))
    assert a.vector_ @ b.vector_ > 0.99


def test_bad_inputs():
    X, y, _ = planted(100, 8)
    with pytest.raises(ExtractionError, match="positives and negatives"):
        make_method("mean_diff").fit(X, np.ones(100))
    Xn = X.copy()
    Xn[7, 3] = np.nan
    with pytest.raises(ExtractionError, match="NaN or inf.*row 7"):
        make_method("probe").fit(Xn, y)
    with pytest.raises(ExtractionError, match="unknown method"):
        make_method("svm")


def test_metrics_against_independent_computations():
    rng = np.random.default_rng(0)
    pos = rng.random(400) < 0.4
    p = rng.standard_normal(400) + pos * 1.0
    m = projection_metrics(p, pos, p, pos)
    # AUROC equals the Mann-Whitney U statistic / (n_pos n_neg)
    u = mannwhitneyu(p[pos], p[~pos]).statistic
    assert np.isclose(m["auroc"], u / (pos.sum() * (~pos).sum()))
    assert np.isclose(m["p_value"], mannwhitneyu(p[pos], p[~pos]).pvalue)
    a, b = p[pos], p[~pos]
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    assert np.isclose(cohens_d(p, pos), (a.mean() - b.mean()) / pooled)
    thr = best_threshold(p, pos)
    brute = max(balanced_accuracy(p, pos, t) for t in np.sort(p))
    assert np.isclose(balanced_accuracy(p, pos, thr), brute)
    assert m["polarity"] == 1 and m["separation"] > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_a_scikit_learn_estimator(name):
    """The contract: clone, get_params(deep), set_params, fit returning self, learned state in
    ``_`` attributes, a unit vector on which positives project higher, the same fit twice."""
    import inspect

    from sklearn.base import clone

    X, y, _ = planted(300, 10, seed=3)
    est = make_method(name)
    params = est.get_params(deep=True)
    named = inspect.signature(type(est).__init__).parameters.values()
    assert set(params) == {p.name for p in named if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD}
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    if "seed" in params:
        assert est.set_params(seed=5).get_params()["seed"] == 5 and clone(est).seed == 5
        est.set_params(seed=params["seed"])
    assert est.fit(X, y) is est
    assert not any(k.endswith("_") for k in clone(est).__dict__)  # a clone carries no learned state
    v = est.vector_
    assert np.isclose(np.linalg.norm(v), 1.0) and (X[y == 1] @ v).mean() > (X[y == -1] @ v).mean()
    np.testing.assert_allclose(make_method(name).fit(X, y).vector_, v, atol=1e-6)
