"""Agreement between two score vectors, and noisy-sample detection.

All take 1-D score vectors of the same length n (tensors or arrays) and return a float (NaN when undefined,
e.g. a constant vector for a rank correlation, or a single class for an AUROC).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64).reshape(-1)


def _constant(a: np.ndarray) -> bool:
    return len(a) < 2 or bool(np.all(a == a[0]))


def spearman(a, b) -> float:
    """Spearman rank correlation (ties averaged)."""
    a, b = _np(a), _np(b)
    if _constant(a) or _constant(b):
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def kendall(a, b) -> float:
    """Kendall's tau-b."""
    a, b = _np(a), _np(b)
    if _constant(a) or _constant(b):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(a, b).statistic)


def topk_overlap(a, b, k: int, largest: bool = True) -> float:
    """|top-k of a ∩ top-k of b| / k, top = largest scores (most helpful); ``largest=False``: the k lowest
    (most harmful). Ties broken by index (stable sort)."""
    a, b = _np(a), _np(b)
    if not 1 <= k <= len(a):
        raise ValueError(f"k must be in 1..{len(a)}, got {k}")
    sign = -1.0 if largest else 1.0
    ta = set(np.argsort(sign * a, kind="stable")[:k].tolist())
    tb = set(np.argsort(sign * b, kind="stable")[:k].tolist())
    return len(ta & tb) / k


def sign_agreement(a, b) -> float:
    """Share of samples with sign(a_i) == sign(b_i), over the samples where b_i != 0 (NaN if none)."""
    a, b = _np(a), _np(b)
    keep = b != 0
    if not keep.any():
        return math.nan
    return float(np.mean(np.sign(a[keep]) == np.sign(b[keep])))


def noisy_auroc(is_noisy, scores) -> float:
    """AUROC of detecting noisy samples (positive class) with -score as the detector (harmful = low score):
    ``roc_auc_score(is_noisy, -scores)``. 1 = every noisy sample scores below every clean one; 0.5 = chance."""
    y = _np(is_noisy).astype(bool)
    s = _np(scores)
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, -s))


def topk_size(n: int, fraction: float) -> int:
    """k = ceil(fraction * n), at least 1 and at most n."""
    return min(n, max(1, math.ceil(fraction * n)))
