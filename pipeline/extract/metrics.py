"""How good is a vector? Metrics on held-out projections, each with a floor to read it against.

Inputs are projections ``p = X @ v`` (float ``[n]``) with boolean ``pos`` labels. Definitions:
- ``auroc``: P(a random positive projects higher than a random negative), ties half;
- ``balanced_accuracy``: mean of TPR and TNR at the threshold that maximises it on *train*;
- ``cohens_d``: (mean_pos - mean_neg) / pooled standard deviation;
- ``separation``: mean_pos - mean_neg, in activation units along the unit vector;
- ``polarity``: +1 when held-out positives project higher on average, else -1 (a vector whose
  polarity flips between train and held-out data is not a trait direction);
- ``p_value``: two-sided Mann-Whitney U test of pos vs neg projections;
- ``stability``: mean cosine between the vector and vectors refitted on bootstrap resamples.
"""

from __future__ import annotations

import numpy as np


def auroc(p: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney's U over ``n_pos * n_neg`` from mid-ranks (ties half): scikit-learn's
    ``roc_auc_score`` to rounding, without its validation (extraction calls this a dozen times a
    layer, where that overhead was most of the metrics' time)."""
    from scipy.stats import rankdata

    pos = np.asarray(pos, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes: only one class is present in the labels")
    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(p: np.ndarray, pos: np.ndarray) -> float:
    """Threshold maximising balanced accuracy on (training) projections."""
    order = np.argsort(p)
    ps, ys = p[order], pos[order]
    n_pos, n_neg = ys.sum(), (~ys).sum()
    # predicting positive for everything strictly above candidate i
    neg_below = np.cumsum(~ys)  # TN if threshold sits after index i
    pos_above = n_pos - np.cumsum(ys)  # TP
    bal = 0.5 * (pos_above / max(n_pos, 1) + neg_below / max(n_neg, 1))
    i = int(np.argmax(bal))
    return float((ps[i] + ps[i + 1]) / 2) if i + 1 < len(ps) else float(ps[i])


def best_f1_threshold(p: np.ndarray, pos: np.ndarray) -> tuple[float, float, float, float]:
    """(threshold, F1, precision, recall) of the cut ``p > threshold`` with the best F1 for the
    positives: the threshold sits halfway between the cut's two neighbouring projections."""
    order = np.argsort(p)
    ps, ys = p[order], pos[order]
    n_pos = int(ys.sum())
    tp = n_pos - np.cumsum(ys)  # positives strictly above cut i (between ps[i] and ps[i + 1])
    predicted = len(ps) - np.arange(1, len(ps) + 1)
    f1 = np.where(predicted + n_pos > 0, 2 * tp / np.maximum(predicted + n_pos, 1), 0.0)
    f1 = np.concatenate([[2 * n_pos / (len(ps) + n_pos)], f1[:-1]])  # cut -1: everything predicted positive
    i = int(np.argmax(f1))  # i = 0: below the lowest; else between ps[i - 1] and ps[i]
    thr = float(ps[0] - 1e-9) if i == 0 else float((ps[i - 1] + ps[i]) / 2)
    pred = p > thr
    tp_i = int((pred & pos).sum())
    precision = tp_i / max(int(pred.sum()), 1)
    recall = tp_i / max(n_pos, 1)
    actual = 2 * tp_i / max(int(pred.sum()) + n_pos, 1)  # (equal projections fall on one side together)
    return thr, float(actual), float(precision), float(recall)


def balanced_accuracy(p: np.ndarray, pos: np.ndarray, threshold: float) -> float:
    pred = p > threshold
    tpr = (pred & pos).sum() / max(pos.sum(), 1)
    tnr = (~pred & ~pos).sum() / max((~pos).sum(), 1)
    return float(0.5 * (tpr + tnr))


def cohens_d(p: np.ndarray, pos: np.ndarray) -> float:
    a, b = p[pos], p[~pos]
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / max(len(a) + len(b) - 2, 1))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("inf")


def p_value(p: np.ndarray, pos: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(p[pos], p[~pos], alternative="two-sided").pvalue)


def projection_metrics(p_train: np.ndarray, pos_train: np.ndarray, p_held: np.ndarray, pos_held: np.ndarray) -> dict:
    """All held-out metrics of one vector, threshold learned on train."""
    thr = best_threshold(p_train, pos_train)
    sep = float(p_held[pos_held].mean() - p_held[~pos_held].mean())
    return {"auroc": auroc(p_held, pos_held), "balanced_accuracy": balanced_accuracy(p_held, pos_held, thr),
            "threshold": thr, "cohens_d": cohens_d(p_held, pos_held), "separation": sep,
            "polarity": 1 if sep >= 0 else -1, "p_value": p_value(p_held, pos_held),
            "train_auroc": auroc(p_train, pos_train)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def auroc_interval(a: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Hanley & McNeil's (1982) 95% interval of an AUROC ``a`` measured on ``n_pos`` positives
    and ``n_neg`` negatives, clipped to [0, 1]: what the stored metric alone allows (the
    projections are not kept). Its standard error treats the score distributions as
    exponential, which bootstrap intervals match closely away from AUROC 1."""
    if not (n_pos > 0 and n_neg > 0) or a is None or not np.isfinite(a):
        return float("nan"), float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = z * float(np.sqrt(max(var, 0.0)))
    return max(0.0, a - half), min(1.0, a + half)


def cohens_d_interval(d: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """The large-sample 95% interval of Cohen's d (Hedges & Olkin): standard error
    ``sqrt((n1 + n2) / (n1 n2) + d^2 / (2 (n1 + n2)))``."""
    if not (n_pos > 1 and n_neg > 1) or d is None or not np.isfinite(d):
        return float("nan"), float("nan")
    n = n_pos + n_neg
    half = z * float(np.sqrt(n / (n_pos * n_neg) + d * d / (2 * n)))
    return d - half, d + half
