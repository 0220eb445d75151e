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
    # float32 chunks (what the store streams): the products are summed in float64 all the same
    b = LogisticProbe().fit_streaming(lambda: ((X[i:i + 100].astype(np.float32), pos[i:i + 100])
                                               for i in range(0, len(X), 100)), ClassStats.of(X, y))
    assert a.vector_ @ b.vector_ > 1 - 1e-8


def sklearn_probe(X, y, C=1.0):
    """The probe as a user writes it: scikit-learn on standardised features, mapped back."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = X.mean(0), X.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit((X - mu) / sd, y == 1)
    w = clf.coef_[0] / sd
    return w / np.linalg.norm(w), float(clf.intercept_[0] - (mu / sd) @ clf.coef_[0])


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_newton_probe_reaches_scikit_learns_optimum(C):
    X, y, u = planted(600, 80, seed=7, sep=2.0)
    est = LogisticProbe(C=C).fit(X, y)
    want, bias = sklearn_probe(X, y, C)
    assert est.vector_ @ want > 1 - 1e-6
    assert np.isclose(est.info_["bias"] / np.linalg.norm(est.info_["raw_weights"]), bias / np.linalg.norm(
        LogisticProbe(C=C).fit(X, y).info_["raw_weights"]), rtol=1e-3, atol=1e-3) and est.info_["converged"]


def laplace_planted(n, d, seed, sep=2.0):
    """Independent heavy-tailed sources, one shifted by class, mixed by a random rotation: data
    on which ICA is well posed (on Gaussian noise FastICA never converges and even the order of
    the rows changes its answer, so no two fits could be compared)."""
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 2 == 0, 1, -1)
    S = rng.laplace(size=(n, d)) * np.exp(rng.normal(size=d))
    S[:, 0] += sep * y
    return S @ np.linalg.qr(rng.normal(size=(d, d)))[0], y


@pytest.mark.parametrize("name", list(METHODS))
def test_bootstrap_refit_equals_a_fit_on_the_repeated_rows(name):
    """The fast path (counts over the original rows, shared statistics, warm starts) gives the
    vector a plain bootstrap gets by copying the resample and fitting it again."""
    from traitlens.pipeline.extract.resample import Resample, bootstrap_counts

    X, y = laplace_planted(500, 96, seed=8)  # d >= 64: the Lanczos eigen-solver path
    pos = y == 1
    full = make_method(name).fit(X, y)
    for w in bootstrap_counts(pos, 3, np.random.default_rng(1)):
        fast = make_method(name).refit(Resample(X, pos, w), init=full)
        Xb, yb = np.repeat(X, w, axis=0), np.repeat(y, w)
        if name == "probe":  # an independent solver on the copied resample
            plain = sklearn_probe(Xb, yb)[0]
        else:
            plain = make_method(name).fit(Xb, yb, init=full).vector_
        assert fast.vector_ @ plain > 1 - 1e-6, (name, fast.vector_ @ plain)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_resample_drawing_one_row_per_class_fits_at_activation_scale(name):
    """2 + 2 training rows: a bootstrap draws one row twice per class a quarter of the time. Neither
    class varies then, and at residual-stream magnitudes (hundreds) the covariance is pure rounding
    noise, which once made gradient's Cholesky fail. Every method fits; gradient, with nothing to
    whiten, gives the mean difference of the two rows drawn."""
    from traitlens.pipeline.extract.resample import Resample

    rng = np.random.default_rng(3)
    d = 64
    X = rng.standard_normal((4, d)) * rng.uniform(1, 300, d)  # per-dimension scales as in late layers
    pos = np.array([True, True, False, False])
    full = make_method(name).fit(X, np.where(pos, 1, -1))
    w = np.array([2, 0, 0, 2])
    v = make_method(name).refit(Resample(X, pos, w), init=full).vector_
    assert np.isfinite(v).all() and np.isclose(np.linalg.norm(v), 1.0)
    if name == "gradient":
        diff = X[0] - X[3]
        assert v @ diff / np.linalg.norm(diff) > 1 - 1e-6
        one_each = make_method(name).fit(X[[0, 3]], [1, -1]).vector_  # the same on a 1 + 1 training set
        assert one_each @ v > 1 - 1e-6


def test_stability_equals_a_plain_bootstrap_and_random_stays_near_zero():
    from traitlens.pipeline.extract.metrics import cosine
    from traitlens.pipeline.extract.resample import stability

    X, y = laplace_planted(400, 96, seed=9)
    pos = y == 1
    names = ["mean_diff", "pca_diff", "gradient", "probe", "ica", "random"]
    fitted = {m: make_method(m).fit(X, y) for m in names}

    def make(m, b):
        return make_method(m, seed=b + 1) if m == "random" else make_method(m)

    got = stability(fitted, make, X, pos, 6, np.random.default_rng(3))
    rng = np.random.default_rng(3)  # the same draws, done the plain way: copy, refit, compare
    want = {m: [] for m in names}
    for b in range(6):
        idx = np.concatenate([rng.choice(np.flatnonzero(pos), pos.sum()), rng.choice(np.flatnonzero(~pos), (~pos).sum())])
        for m in names:
            v = sklearn_probe(X[idx], y[idx])[0] if m == "probe" else make(m, b).fit(X[idx], y[idx], init=fitted[m]).vector_
            want[m].append(cosine(v, fitted[m].vector_))
    for m in names:
        assert abs(got[m] - np.mean(want[m])) < 1e-5, (m, got[m], np.mean(want[m]))
    assert abs(got["random"]) < 0.15 and got["mean_diff"] > 0.8  # the floor sits near 0; a real direction far above


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
    # separation: the mean gap along the vector; polarity: its sign (flipped projections flip both)
    assert np.isclose(m["separation"], a.mean() - b.mean()) and m["polarity"] == 1
    flipped = projection_metrics(-p, pos, -p, pos)
    assert np.isclose(flipped["separation"], b.mean() - a.mean()) and flipped["polarity"] == -1
    assert np.isclose(flipped["auroc"], 1 - m["auroc"])


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


def test_the_fastica_loop_is_scikit_learns_step_for_step():
    """traitlens's FastICA (symmetric, logcosh, on whitened data) against scikit-learn's own
    FastICA(whiten=False): the same unmixing and iteration count, cold (seeded) and warm."""
    from sklearn.decomposition import FastICA

    from traitlens.pipeline.extract.methods import fastica_symmetric

    rng = np.random.default_rng(5)
    S = np.c_[rng.laplace(size=(600, 4)), rng.uniform(-1, 1, size=(600, 4))]  # non-Gaussian: well posed
    S = (S - S.mean(0)) / S.std(0)
    Z = S @ np.linalg.qr(rng.standard_normal((8, 8)))[0]  # white: unit-variance sources, rotated
    for w_init in (np.random.RandomState(3).normal(size=(8, 8)), rng.standard_normal((8, 8))):
        ref = FastICA(whiten=False, fun="logcosh", max_iter=200, tol=1e-4, w_init=w_init).fit(Z)
        W, n_iter = fastica_symmetric(Z, w_init, 200, 1e-4)
        assert n_iter == ref.n_iter_ and n_iter < 200
        np.testing.assert_allclose(W, ref.components_, atol=1e-8)
    # the estimator's cold start is scikit-learn's with random_state=seed
    ica = make_method("ica", seed=3, n_components=8)
    mean, Wh = ica.whitening(ClassStats.of(Z, np.r_[np.ones(300), -np.ones(300)]))
    Zw = (Z - mean) @ Wh.T
    ref = FastICA(whiten=False, fun="logcosh", max_iter=ica.max_iter, tol=ica.tol, random_state=3).fit(Zw)
    ica.fit_reduced(Zw, np.r_[np.ones(300, bool), np.zeros(300, bool)], Wh, ClassStats.of(Z, np.r_[np.ones(300), -np.ones(300)]))
    np.testing.assert_allclose(ica.info_["unmixing"], ref.components_, atol=1e-8)


def test_auroc_is_scikit_learns_with_ties_and_refuses_one_class():
    from sklearn.metrics import roc_auc_score

    from traitlens.pipeline.extract.metrics import auroc

    rng = np.random.default_rng(2)
    for p in (rng.standard_normal(300), np.round(rng.standard_normal(300), 1)):  # the second has many ties
        pos = rng.random(300) < 0.4
        assert auroc(p, pos) == pytest.approx(roc_auc_score(pos, p), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.arange(4.0), np.ones(4, bool))
