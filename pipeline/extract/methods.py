"""Trait-direction estimators, scikit-learn style.

Every estimator: ``__init__`` stores parameters; ``fit(X, y)`` takes ``X`` float ``[n, d]`` and
labels ``y`` in {+1, -1} (or {1, 0}) and returns self; learned state ends in ``_``:
``vector_`` (unit norm, float64 ``[d]``, oriented so positives project higher),
``raw_norm_`` (norm before normalising) and ``info_`` (method-specific extras).
``fit_stats(stats)`` fits from :class:`ClassStats` alone where the method allows it, which is
how the out-of-core path runs: one streaming pass, then the same arithmetic.

Methods: mean difference; pca-diff (RepE/repeng: top principal direction of paired
differences); ICA (FastICA on a whitened subspace, the component that best separates the
classes); logistic probe; gradient (maximises the standardised separation of projections with
a norm penalty); a seeded random direction as the floor every metric is read against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator

from traitlens.store.errors import InputError

# rows ClassStats.update converts to float64 at a time: 2,048 x d=576 is 9 MB, under glibc's
# mmap threshold, so each part reuses the last one's memory instead of faulting in fresh pages
UPDATE_ROWS = 2048

# the smallest within-class variance Gradient reads, as a fraction of the mean second moment
# E[x^2]: covariances computed as E[xx^T] - mu mu^T carry rounding noise near 1e-16 of it
GRADIENT_SCALE_FLOOR = 1e-6


class ExtractionError(InputError):
    """The contrastive set cannot be used (no positives, non-finite rows, ...)."""


def as_binary(y) -> np.ndarray:
    """Labels as bool ``[n]``: True for the positive class (+1 or 1)."""
    y = np.asarray(y)
    bad = ~np.isin(y, (1, -1, 0))
    if bad.any():
        raise ExtractionError(f"labels must be +1/-1 (or 1/0); got {np.unique(y[bad])[:5]}")
    return y == 1


def check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    pos = as_binary(y)
    if X.ndim != 2 or X.shape[0] != pos.shape[0]:
        raise ExtractionError(f"X must be [n, d] with one label per row; got X {X.shape}, y {pos.shape}")
    if pos.all() or not pos.any():
        raise ExtractionError(f"need positives and negatives; got {int(pos.sum())} positive, {int((~pos).sum())} negative")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ExtractionError(f"{int(bad.sum())} rows hold NaN or inf (first at row {int(np.argmax(bad))}); "
                              "run `traitlens verify` and re-ingest them")
    return X, pos


@dataclass
class ClassStats:
    """Sufficient statistics of one contrastive set, built in one streaming pass.

    ``n`` [2], ``sum`` [2, d], ``sumsq`` [d] (per-feature sums of squares, both classes) and ``outer``
    [2, d, d] for (negative, positive): enough for the mean difference, pca-diff, gradient, the
    probe's standardisation and ICA's whitening, in or out of core alike. ``outer`` costs
    O(n d^2) and is None for statistics built ``means_only`` (mean difference, random, probe
    need none). Row weights (bootstrap counts) make them the statistics of a resample
    without copying it.
    """

    n: np.ndarray
    sum: np.ndarray
    outer: np.ndarray | None
    sumsq: np.ndarray | None = None
    # covariances derived once and shared by the methods that read them (pca-diff, gradient and
    # ICA's whitening on one resample); emptied by every update. Never modify what they return.
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls, d: int, means_only: bool = False) -> "ClassStats":
        return cls(np.zeros(2), np.zeros((2, d)), None if means_only else np.zeros((2, d, d)), np.zeros(d))

    def update(self, X: np.ndarray, pos: np.ndarray, weights: np.ndarray | None = None) -> "ClassStats":
        """Add rows ``X`` [m, d] with labels ``pos`` [m]; ``weights`` [m] counts each row that
        many times (a row drawn twice by a bootstrap counts twice). Runs over ``UPDATE_ROWS``
        rows at a time: their float64 copies stay small enough to reuse the same memory."""
        self._derived.clear()
        w = np.ones(len(pos)) if weights is None else np.asarray(weights, dtype=np.float64)
        for i in range(0, len(pos), UPDATE_ROWS):
            part = slice(i, i + UPDATE_ROWS)
            self._add(np.asarray(X[part], dtype=np.float64), pos[part], w[part], weights is None)
        return self

    def _add(self, X: np.ndarray, pos: np.ndarray, w: np.ndarray, unweighted: bool) -> None:
        coef = np.stack([~pos, pos]) * w  # [2, m]: each row's weight in each class
        self.n += coef.sum(1)
        self.sum += coef @ X  # one product for both classes: no per-class copies
        self.sumsq += np.einsum("ij,ij->j", X, X) if unweighted else np.einsum("i,ij,ij->j", w, X, X)
        if self.outer is not None:
            for c, m in ((0, ~pos), (1, pos)):
                if unweighted:
                    Xc = X[m]
                else:  # sum_i w_i x_i x_i^T = A^T A with A = sqrt(w) x (rows w=0 dropped)
                    drawn = m & (w > 0)
                    Xc = X[drawn] * np.sqrt(w[drawn])[:, None]
                self.outer[c] += Xc.T @ Xc

    @property
    def sd(self) -> np.ndarray:
        """Per-feature standard deviation over both classes (maximum likelihood) ``[d]``."""
        n = self.n.sum()
        mu = self.sum.sum(0) / n
        return np.sqrt(np.clip(self.sumsq / n - mu ** 2, 0, None))

    @classmethod
    def of(cls, X, y) -> "ClassStats":
        X, pos = check_xy(X, y)
        return cls.empty(X.shape[1]).update(X, pos)

    @property
    def means(self) -> np.ndarray:
        return self.sum / self.n[:, None]

    @property
    def covs(self) -> np.ndarray:
        """Per-class covariance (maximum likelihood) ``[2, d, d]``."""
        if "covs" not in self._derived:
            mu = self.means
            self._derived["covs"] = self.outer / self.n[:, None, None] - mu[:, :, None] * mu[:, None, :]
        return self._derived["covs"]

    @property
    def pooled_cov(self) -> np.ndarray:
        """Covariance of both classes together (maximum likelihood) ``[d, d]``."""
        if "pooled_cov" not in self._derived:
            mu = self.sum.sum(0) / self.n.sum()
            self._derived["pooled_cov"] = self.outer.sum(0) / self.n.sum() - np.outer(mu, mu)
        return self._derived["pooled_cov"]


def top_eigh(M: np.ndarray, k: int, lanczos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of symmetric ``M`` [d, d], largest first: (w [k], V [d, k]).

    ``lanczos``: ARPACK for a few pairs of a large matrix, measured 1.2 ms for k=1 and 2.6 ms
    for k=8 at d=576 against 11-12 ms for LAPACK's subset driver, to the same precision (1e-15);
    its start vector is seeded, so a fit is reproducible. The two may return an eigenvector with
    opposite signs: callers whose answer depends on the signs (ICA's whitening) pass False.
    Small matrices (or k near d) always go to LAPACK, which ARPACK cannot serve."""
    d = M.shape[0]
    if lanczos and d >= 64 and k < d // 4:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).standard_normal(d)
        w, V = eigsh(M, k=k, which="LA", v0=v0)
    else:
        from scipy.linalg import eigh

        w, V = eigh(M, subset_by_index=[d - k, d - 1], driver="evr", check_finite=False)
    order = np.argsort(w)[::-1]
    return w[order], V[:, order]


def _finish(est, v: np.ndarray, mu_pos: np.ndarray, mu_neg: np.ndarray):
    """Normalise and orient ``v`` so the positive mean projects higher; set vector_/raw_norm_."""
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise ExtractionError(f"{type(est).__name__} produced a zero or non-finite direction")
    u = v / norm
    if (mu_pos - mu_neg) @ u < 0:
        u = -u
    est.vector_, est.raw_norm_ = u, norm
    return est


class Direction(BaseEstimator):
    """Base: ``fit`` via statistics unless a subclass needs the rows. A scikit-learn estimator:
    ``get_params(deep)``, ``set_params`` and ``sklearn.base.clone`` work from ``__init__``'s
    signature; learned state ends in ``_``. ``needs_outer``: the method's statistics include the
    [d, d] second moments (the out-of-core pass skips them when no method asks).
    ``takes_background``: with ``extract --background``, the background's train rows join the
    negatives this method is fitted on (methods that contrast one class with the rest; not
    pca-diff, whose paired differences assume two matched classes, nor ICA or the floor)."""

    name = "base"
    needs_rows = False
    needs_outer = True
    takes_background = False

    def fit(self, X, y, init=None):
        """``init``: an already fitted estimator of the same kind to warm-start from (bootstrap)."""
        return self.fit_stats(ClassStats.of(X, y), init=init)

    def fit_stats(self, stats: ClassStats, init=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def refit(self, resample, init=None):
        """Fit on a bootstrap resample (:class:`~traitlens.pipeline.extract.resample.Resample`:
        the original rows and a count per row) without materialising its rows; the result
        equals ``fit`` on the repeated rows. ``init``: the fit on all rows (warm start)."""
        return self.fit_stats(resample.stats, init=init)

    def extract(self, pos, neg) -> dict:
        """repeng-style call: ``pos`` [n_pos, d], ``neg`` [n_neg, d] -> dict with ``vector``."""
        pos, neg = np.asarray(pos), np.asarray(neg)
        X = np.concatenate([pos, neg])
        y = np.r_[np.ones(len(pos)), -np.ones(len(neg))]
        self.fit(X, y)
        return {"vector": self.vector_, "raw_norm": self.raw_norm_, **getattr(self, "info_", {})}


class MeanDifference(Direction):
    """``mean(pos) - mean(neg)``."""

    name = "mean_diff"
    needs_outer = False
    takes_background = True

    def fit_stats(self, stats, init=None):
        mu = stats.means
        _finish(self, mu[1] - mu[0], mu[1], mu[0])
        self.info_ = {"pos_mean": mu[1], "neg_mean": mu[0]}
        return self

    def refit(self, resample, init=None):
        return self.fit_stats(resample.mean_stats, init=init)


class PCADiff(Direction):
    """Top eigenvector of E[(x_pos - x_neg)(x_pos - x_neg)^T] over random pos/neg pairs.

    In closed form that expectation is ``cov_pos + cov_neg + delta delta^T`` (delta = mean
    difference), which is what pairing every positive with every negative gives; computing it
    from statistics makes the in-core and out-of-core results identical. Like repeng's and
    RepE's readers it follows the largest variance of the differences: with unpaired prompts a
    nuisance dimension whose variance beats the squared mean difference wins (the probe and
    the gradient method whiten such dimensions away; compare their metrics).
    """

    name = "pca_diff"

    def fit_stats(self, stats, init=None):
        mu, cov = stats.means, stats.covs
        delta = mu[1] - mu[0]
        M = cov[0] + cov[1] + np.outer(delta, delta)
        w, V = top_eigh(M, 1)
        _finish(self, V[:, 0] * np.sqrt(max(w[0], 0.0)), mu[1], mu[0])
        self.info_ = {"explained": float(w[0] / max(np.trace(M), 1e-30))}
        return self


class Gradient(Direction):
    """Maximise the standardised separation of projections by gradient-based optimisation.

    loss(v) = -(mu_pos - mu_neg)·v / sqrt(v^T S v) + lam * (|L^T v| - 1)^2, with
    S = L L^T = (cov_pos + cov_neg) / 2 shrunk towards its mean eigenvalue by ``shrinkage`` (so
    the optimum does not chase noise directions when n is small against d). Minimised by
    L-BFGS over u = L^T v (whitened, so well conditioned) from a seeded random start; the norm
    penalty only pins the scale. Needs only class statistics, so it runs out of core exactly.
    ``info_["loss_history"]`` holds the loss at every iteration.
    """

    name = "gradient"
    takes_background = True

    def __init__(self, lam: float = 0.1, shrinkage: float = 0.1, seed: int = 0, max_iter: int = 500):
        self.lam, self.shrinkage, self.seed, self.max_iter = lam, shrinkage, seed, max_iter

    def fit_stats(self, stats, init=None):
        from scipy.optimize import minimize

        mu, cov = stats.means, stats.covs
        S = (cov[0] + cov[1]) / 2
        d = S.shape[0]
        # S is E[xx^T] - mu mu^T: when neither class varies (one row each, or a bootstrap of 2 + 2
        # rows drawing one row twice per class) it is rounding noise the size of eps * E[x^2],
        # which dividing by its own trace would blow up into an indefinite matrix. The scale's
        # floor, far above that noise, keeps S/scale near zero there: the shrinkage target (the
        # identity) remains and the direction is the mean difference, whitened by nothing.
        second_moment = float(np.trace(stats.outer[0] + stats.outer[1])) / (d * float(stats.n.sum()))
        scale = max(float(np.trace(S)) / d, GRADIENT_SCALE_FLOOR * second_moment) + 1e-12
        S = (1 - self.shrinkage) * S / scale + self.shrinkage * np.eye(d)  # unit-free, better conditioned
        delta = (mu[1] - mu[0]) / np.sqrt(scale)
        # Optimise in the whitened space u = L^T v (S = L L^T): the loss keeps its value, the
        # best direction maps back exactly, and L-BFGS needs a handful of steps instead of
        # hundreds when a few residual dimensions carry most of the variance (they do in LLMs).
        from scipy.linalg import cholesky, solve_triangular

        L = cholesky(S, lower=True, check_finite=False)
        delta = solve_triangular(L, delta, lower=True, check_finite=False)
        lam = self.lam

        def f(u):  # in u-space the projection variance u^T u is the squared norm
            nu = float(np.linalg.norm(u)) + 1e-12
            du = float(delta @ u)
            loss = -du / nu + lam * (nu - 1) ** 2
            grad = -delta / nu + du * u / nu**3 + 2 * lam * (nu - 1) * u / nu
            return loss, grad

        history: list[float] = []
        u0 = np.random.default_rng(self.seed).standard_normal(d) if init is None else L.T @ init.vector_
        res = minimize(f, u0 / np.linalg.norm(u0), jac=True, method="L-BFGS-B",
                       callback=lambda xk: history.append(float(f(xk)[0])), options={"maxiter": self.max_iter})
        u = res.x
        _finish(self, solve_triangular(L.T, u, lower=False, check_finite=False), mu[1], mu[0])
        self.info_ = {"loss_history": history or [float(res.fun)],
                      "separation": float((delta @ u) / np.linalg.norm(u)), "iterations": int(res.nit)}
        return self


class RandomDirection(Direction):
    """A seeded random unit vector, oriented on the training means: the floor for every metric."""

    name = "random"
    needs_outer = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit_stats(self, stats, init=None):
        rng = np.random.default_rng(self.seed)
        mu = stats.means
        _finish(self, rng.standard_normal(mu.shape[1]), mu[1], mu[0])
        self.info_ = {}
        return self

    def refit(self, resample, init=None):
        return self.fit_stats(resample.mean_stats, init=init)


class ICADirection(Direction):
    """FastICA on the top ``n_components`` principal directions; keep the best-separating one.

    Whitening comes from the pooled covariance (statistics), then FastICA runs on the reduced
    ``[n, k]`` data, so out of core only ``k`` numbers per row are ever held. The component
    chosen is the one whose projections best separate the classes (largest |Cohen's d|), not
    component 0, oriented so positives project higher.
    """

    name = "ica"
    needs_rows = True

    def __init__(self, n_components: int = 8, seed: int = 0, max_iter: int = 200, tol: float = 1e-3):
        self.n_components, self.seed, self.max_iter, self.tol = n_components, seed, max_iter, tol

    def whitening(self, stats: ClassStats, lanczos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mean [d], W [k, d]) such that (x - mean) @ W.T has identity covariance.

        LAPACK by default: a cold FastICA's local optimum depends on the basis' signs, and these
        are the signs (and so the ICA vectors) every earlier version computed. A warm-started
        refit may use Lanczos (faster): its start is carried into whatever basis it gets, and
        FastICA's iterations commute with flipping basis vectors, so the answer is the same."""
        C = stats.pooled_cov
        w, V = top_eigh(C, min(self.n_components, int(stats.n.sum()) - 1, C.shape[0]), lanczos=lanczos)
        k = int((w > w[0] * 1e-9).sum())
        w, V = w[:k], V[:, :k]
        mean = stats.sum.sum(0) / stats.n.sum()
        return mean, (V / np.sqrt(w)).T

    def fit_reduced(self, Z: np.ndarray, pos: np.ndarray, W: np.ndarray, stats: ClassStats, init=None):
        """FastICA on whitened ``Z`` [n, k]; ``W`` [k, d] maps back to the input space.

        ``init`` (a fit on all rows, when this is a bootstrap refit): FastICA starts from its
        components carried into this fit's whitened basis, so a resample is compared with the
        nearest solution rather than with whichever local optimum a cold start lands on."""
        w_init = None
        if init is not None and init.info_["components"].shape[0] == W.shape[0]:
            # components C [k, d] = U W  =>  U = C W^+, with W^+ = W^T (W W^T)^-1
            w_init = init.info_["components"] @ W.T @ np.linalg.inv(W @ W.T)
        if w_init is None:  # scikit-learn's cold start: a normal [k, k] from the seed
            w_init = np.random.RandomState(self.seed).normal(size=(Z.shape[1], Z.shape[1]))
        unmixing, n_iter = fastica_symmetric(Z, w_init, self.max_iter, self.tol)
        S = Z @ unmixing.T  # sources [n, k]
        d = (S[pos].mean(0) - S[~pos].mean(0)) / np.sqrt(0.5 * (S[pos].var(0) + S[~pos].var(0)) + 1e-12)
        best = int(np.argmax(np.abs(d)))
        v = unmixing[best] @ W  # direction in the input space
        mu = stats.means
        _finish(self, v, mu[1], mu[0])
        self.info_ = {"components": unmixing @ W, "separation_scores": d, "chosen": best,
                      "unmixing": unmixing, "iterations": n_iter, "converged": bool(n_iter < self.max_iter)}
        return self

    def fit(self, X, y, init=None):
        X, pos = check_xy(X, y)
        stats = ClassStats.empty(X.shape[1]).update(X, pos)
        return self.fit_with_stats(X, pos, stats, init=init)

    def fit_with_stats(self, X, pos, stats: ClassStats, init=None):
        """``fit`` when the rows' statistics are already at hand (the in-core path shares them)."""
        mean, W = self.whitening(stats)
        return self.fit_reduced((X - mean) @ W.T, pos, W, stats, init=init)

    def refit(self, resample, init=None):
        stats = resample.stats
        mean, W = self.whitening(stats, lanczos=init is not None)
        Z = (resample.X - mean) @ W.T  # [n, k]: only k numbers per row are repeated
        return self.fit_reduced(np.repeat(Z, resample.w, axis=0), np.repeat(resample.pos, resample.w), W, stats,
                                init=init)


def _sym_decorrelation(W: np.ndarray) -> np.ndarray:
    """``(W W^T)^{-1/2} W`` [k, k]: the nearest matrix with orthonormal rows. scikit-learn's
    arithmetic, with the LAPACK call its ``scipy.linalg.eigh`` makes (``dsyevr``, lower, the
    same workspace) made directly, so a fit that does not converge wanders exactly as it did."""
    from scipy.linalg import lapack

    k = W.shape[0]
    if k not in _SYEVR_WORK:
        lw, liw, _ = lapack.dsyevr_lwork(k, lower=1)
        _SYEVR_WORK[k] = {"lwork": int(lw), "liwork": int(liw)}
    s, u, _, _, info = lapack.dsyevr(np.dot(W, W.T), compute_v=1, lower=1, **_SYEVR_WORK[k])
    if info != 0:
        raise np.linalg.LinAlgError(f"dsyevr failed in FastICA's decorrelation (info {info})")
    s = np.maximum(s, _TINY)  # scikit-learn's clip, without its overhead
    return np.dot(u * (1.0 / np.sqrt(s)), np.dot(u.T, W))  # the order multi_dot picks for square factors


_SYEVR_WORK: dict[int, dict] = {}  # LAPACK workspace sizes per k, as scipy computes them
_TINY = np.finfo(np.float64).tiny


def fastica_symmetric(Z: np.ndarray, w_init: np.ndarray, max_iter: int = 200, tol: float = 1e-3
                      ) -> tuple[np.ndarray, int]:
    """Symmetric (parallel) FastICA with the logcosh contrast on already-whitened ``Z`` [n, k]:
    (unmixing [k, k], iterations). scikit-learn's ``FastICA(whiten=False, fun="logcosh")``
    iteration, operation for operation (tested equal), without its per-call validation: a
    bootstrap refit runs it per layer and resample, ~100 steps of [k, n] arithmetic whose
    overhead was most of the time."""
    X = np.asarray(Z, dtype=np.float64).T  # [k, n], a view as scikit-learn's (the same BLAS path)
    p = float(X.shape[1])
    W = _sym_decorrelation(np.asarray(w_init, dtype=np.float64))
    for it in range(1, max_iter + 1):
        g = np.tanh(np.dot(W, X))
        W1 = _sym_decorrelation(np.dot(g, X.T) / p - (1 - g ** 2).mean(axis=-1)[:, np.newaxis] * W)
        lim = max(abs(abs(np.einsum("ij,ij->i", W1, W)) - 1))
        W = W1
        if lim < tol:
            return W, it
    return W, max_iter


class LogisticProbe(Direction):
    """L2 (or L1) logistic regression on standardised features; the weight vector is the direction.

    The objective is scikit-learn's: ``C * sum_i logloss_i + |w|^2 / 2`` on features standardised
    by the rows' mean and std. L2 in core: Newton-CG (trust region, Hessian-vector products,
    O(n d) each) to a gradient norm of ``tol / 100`` per row and unit of C, 100x tighter than
    scikit-learn's own stopping rule and measured 10x faster than its L-BFGS at d=576; rows can
    carry weights, which is how bootstrap refits run without copying a resample. L1: scikit-learn
    (saga or liblinear). Out of core: L-BFGS with loss and gradient summed chunk by chunk
    (:func:`fit_streaming`).
    """

    name = "probe"
    needs_rows = True
    needs_outer = False
    takes_background = True

    def __init__(self, C: float = 1.0, penalty: str = "l2", max_iter: int = 500, tol: float = 1e-4):
        self.C, self.penalty, self.max_iter, self.tol = C, penalty, max_iter, tol

    def fit(self, X, y, init=None):
        """``init``: a probe fitted on similar rows (the full fit, for a bootstrap refit) to start from."""
        X, pos = check_xy(X, y)
        if self.penalty != "l2":
            return self._fit_sklearn(X, pos, init)
        return self._fit_newton(X, pos, None, init)

    def refit(self, resample, init=None):
        """The same objective on a bootstrap resample, rows weighted by their counts (standardised
        by the resample's weighted mean and std, as ``fit`` on the repeated rows would)."""
        if self.penalty != "l2":  # no Hessian for L1: the plain path on the repeated rows
            return self.fit(*resample.rows(), init=init)
        return self._fit_newton(resample.X, resample.pos, resample.w, init)

    def _fit_newton(self, X, pos, weights, init):
        from scipy.optimize import minimize
        from scipy.special import expit

        w = np.ones(len(pos)) if weights is None else np.asarray(weights, dtype=np.float64)
        drawn = w > 0  # rows with weight 0 (not drawn by a resample) add nothing
        if not drawn.all():
            X, pos, w = X[drawn], pos[drawn], w[drawn]
        t = np.where(pos, 1.0, -1.0)
        total = w.sum()
        mu = w @ X / total
        sd = np.sqrt(np.clip(w @ (X - mu) ** 2 / total, 0, None)) + 1e-8
        Z = (X - mu) / sd
        d, C = X.shape[1], self.C
        cache: dict = {}

        def margins(theta):  # t * (Z w + b), shared by the loss and the Hessian products at theta
            key = theta.tobytes()
            if cache.get("key") != key:
                cache.update(key=key, m=t * (Z @ theta[:d] + theta[d]))
            return cache["m"]

        def f(theta):
            m = margins(theta)
            g = -C * w * t * expit(-m)
            loss = C * (w @ np.logaddexp(0, -m)) + 0.5 * theta[:d] @ theta[:d]
            return loss, np.r_[Z.T @ g + theta[:d], g.sum()]

        def hessp(theta, v):
            p = expit(margins(theta))
            u = C * w * p * (1 - p) * (Z @ v[:d] + v[d])
            return np.r_[Z.T @ u + v[:d], u.sum()]

        theta0 = np.zeros(d + 1)
        if init is not None:
            w0 = init.info_["raw_weights"]
            theta0 = np.r_[w0 * sd, init.info_["bias"] + w0 @ mu]
        res = minimize(f, theta0, jac=True, hessp=hessp, method="trust-ncg",
                       options={"gtol": self.tol * 1e-2 * C * total, "maxiter": self.max_iter})
        raw = res.x[:d] / sd  # back to the raw activation space
        bias = float(res.x[d] - (mu / sd) @ res.x[:d])
        _finish(self, raw, (w[pos] @ X[pos]) / w[pos].sum(), (w[~pos] @ X[~pos]) / w[~pos].sum())
        correct = (Z @ res.x[:d] + res.x[d] > 0) == pos
        self.info_ = {"bias": bias, "train_accuracy": float(w @ correct / total), "raw_weights": raw,
                      "iterations": int(res.nit), "converged": bool(res.success)}
        return self

    def _fit_sklearn(self, X, pos, init):
        from sklearn.linear_model import LogisticRegression

        mu, sd = X.mean(0), X.std(0) + 1e-8
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, warm_start=init is not None,
                                 **_penalty_kwargs(self.penalty))
        if init is not None:  # warm start from a fit on similar data (bootstrap): a few iterations
            clf.coef_ = (init.info_["raw_weights"] * sd)[None, :]
            clf.intercept_ = np.array([init.info_["bias"] + init.info_["raw_weights"] @ mu])
            clf.classes_ = np.array([False, True])
        clf.fit((X - mu) / sd, pos)
        w = clf.coef_[0] / sd
        b = float(clf.intercept_[0] - (mu / sd) @ clf.coef_[0])
        _finish(self, w, X[pos].mean(0), X[~pos].mean(0))
        self.info_ = {"bias": b, "train_accuracy": float(clf.score((X - mu) / sd, pos)), "raw_weights": w,
                      "iterations": int(clf.n_iter_[0])}
        return self

    def fit_streaming(self, chunks, stats: ClassStats, init=None):
        """Same objective as :meth:`fit` (L2, standardised features) over an iterable factory
        ``chunks()`` yielding ``(X [m, d], pos [m])`` (float32 is enough: products are summed
        in float64 across chunks); data never held whole. Standardisation is folded into the
        weights (``Z w = X (w / sd) - mu . (w / sd)``), so no standardised copy is made.

        Every L-BFGS step is a pass over the data, so ``init`` (a probe fitted on a subsample
        that fits in memory) saves most of them: the optimum is the same, the start is closer.
        (A trust-region Newton-CG with the subsample's Hessian was measured on 200k rows: 7-9
        passes against L-BFGS's 8-13, not worth a second solver.)"""
        from scipy.optimize import minimize
        from scipy.special import expit

        if self.penalty != "l2":
            raise ExtractionError("the out-of-core probe supports penalty='l2' only")
        n = stats.n.sum()
        mu = stats.sum.sum(0) / n
        sd = stats.sd + 1e-8
        d = mu.shape[0]

        def f(theta):
            w, b = theta[:d], theta[d]
            a = w / sd
            a32, c = a.astype(np.float32), b - mu @ a
            loss, gx, gb = 0.0, np.zeros(d), 0.0
            for X, pos in chunks():
                t = np.where(pos, 1.0, -1.0)
                m = t * ((X @ a32).astype(np.float64) + c)
                loss += np.logaddexp(0, -m).sum()
                s = -t * expit(-m)
                gx += (s.astype(np.float32) @ X).astype(np.float64)  # X^T s
                gb += s.sum()
            gw = (gx - mu * gb) / sd  # Z^T s
            # sklearn: C * sum(logloss) + 0.5 |w|^2
            return self.C * loss + 0.5 * w @ w, np.r_[self.C * gw + w, self.C * gb]

        theta0 = np.zeros(d + 1)
        if init is not None:
            w0 = init.info_["raw_weights"]
            theta0 = np.r_[w0 * sd, init.info_["bias"] + w0 @ mu]
        res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        w = res.x[:d] / sd
        mu_c = stats.means
        _finish(self, w, mu_c[1], mu_c[0])
        self.info_ = {"bias": float(res.x[d] - (mu / sd) @ res.x[:d]), "raw_weights": w, "iterations": int(res.nit),
                      "data_passes": int(res.nfev)}
        return self


def _penalty_kwargs(penalty: str) -> dict:
    """scikit-learn 1.8 replaced ``penalty=`` by ``l1_ratio=``; speak whichever is installed."""
    import sklearn

    if penalty not in ("l1", "l2"):
        raise ExtractionError(f"probe penalty {penalty!r}: use l1 or l2")
    new = tuple(int(x) for x in sklearn.__version__.split(".")[:2]) >= (1, 8)
    if penalty == "l2":
        return {} if new else {"penalty": "l2"}
    return {"l1_ratio": 1.0, "solver": "saga"} if new else {"penalty": "l1", "solver": "liblinear"}


METHODS = {cls.name: cls for cls in (MeanDifference, PCADiff, ICADirection, LogisticProbe, Gradient, RandomDirection)}


def make_method(name: str, **params) -> Direction:
    try:
        return METHODS[name](**params)
    except KeyError:
        raise ExtractionError(f"unknown method {name!r}; use {', '.join(METHODS)} or all") from None
