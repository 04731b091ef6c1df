"""Uncertainty of every number a claim rests on: paired differences over seeds, t intervals of a mean, and
seeded bootstrap intervals of rank correlations and AUROC (scipy.stats underneath).

* :func:`paired_difference` (treatment - control per seed, e.g. curated minus vanilla accuracy): mean,
  standard error, t-based confidence interval and two-sided p-value (``scipy.stats.ttest_rel``), and how
  many seeds the treatment won, tied and lost. :func:`paired_table` does it for several methods at once.
* :func:`mean_ci`: mean of values (e.g. a per-step Spearman over seeds and steps) with a t interval.
* :func:`spearman_ci`, :func:`spearman_difference_ci`, :func:`kendall_ci`, :func:`auroc_ci`: the statistic (averaged over strata, e.g. the
  scored steps of one run) with a percentile bootstrap interval (``scipy.stats.bootstrap``, seeded). Samples
  are resampled as clusters: sample j's values at every step move together, so the interval reflects which
  samples happened to be scored, not just rounding. AUROC resamples positives and negatives separately
  (stratified: the number of positives stays fixed) and reports that number next to the value.

Every function returns a frozen dataclass with ``to_dict()`` (JSON-ready, NaN -> None) and ``fmt()``
(``"0.62 [0.48, 0.74]"``). Undefined quantities are NaN (one seed: no interval; a constant score vector: no
rank correlation), never a made-up number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _f(v: float, digits: int) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


@dataclass(frozen=True)
class Estimate:
    """A value with a confidence interval [low, high] at ``confidence``; ``n``: observations behind it
    (seeds, steps or samples, as the producing function says); ``method``: how the interval was made."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE
    method: str = ""

    def excludes(self, x: float) -> bool:
        """Whether the interval lies strictly on one side of ``x`` (False when there is no interval)."""
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > x or self.high < x)

    def above(self, x: float) -> bool:
        """Whether the whole interval lies above ``x``."""
        return math.isfinite(self.low) and self.low > x

    def fmt(self, digits: int = 2) -> str:
        if not math.isfinite(self.low) or not math.isfinite(self.high):
            return f"{_f(self.value, digits)} (no CI)"
        return f"{_f(self.value, digits)} [{_f(self.low, digits)}, {_f(self.high, digits)}]"

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class AurocEstimate(Estimate):
    """An AUROC with its bootstrap interval; ``n_positive``/``n_negative``: positives (e.g. noisy samples)
    and negatives per stratum."""

    n_positive: int = 0
    n_negative: int = 0

    def fmt(self, digits: int = 2) -> str:
        return f"{super().fmt(digits)}, {self.n_positive} positives"


@dataclass(frozen=True)
class PairedDifference:
    """treatment - control over paired seeds. ``mean``, ``sd`` (ddof 1), ``se`` = sd / sqrt(n), t interval
    [low, high], two-sided paired t-test ``p``; ``wins``/``ties``/``losses``: seeds where the treatment was
    above/equal to/below the control; ``n``: paired seeds."""

    mean: float
    sd: float
    se: float
    low: float
    high: float
    p: float
    n: int
    wins: int
    ties: int
    losses: int
    confidence: float = CONFIDENCE

    def significant(self, alpha: float | None = None) -> bool:
        """Whether the interval excludes 0 (at ``1 - alpha``; default this estimate's own confidence)."""
        if alpha is not None and not math.isclose(alpha, 1 - self.confidence):
            return math.isfinite(self.p) and self.p < alpha
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)

    def fmt(self, digits: int = 2) -> str:
        ci = (f"[{_f(self.low, digits)}, {_f(self.high, digits)}]" if math.isfinite(self.low)
              else "(no CI)")
        p = "n/a" if not math.isfinite(self.p) else (f"{self.p:.2g}" if self.p >= 1e-4 else "<1e-4")
        return f"{self.mean:+.{digits}f} {ci}, p={p}, wins {self.wins}/{self.n}"

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray([math.nan if x is None else x for x in np.ravel(values)], dtype=np.float64)
    return v[np.isfinite(v)]


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of the finite ``values`` with a t interval (``scipy.stats.ttest_1samp``); n = values used.
    One value: no interval; identical values: a zero-width interval."""
    v = _finite(values)
    n = int(v.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence, "t")
    mu = float(v.mean())
    if n == 1:
        return Estimate(mu, math.nan, math.nan, 1, confidence, "t")
    if np.all(v == v[0]):
        return Estimate(mu, mu, mu, n, confidence, "t")
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(confidence)
    return Estimate(mu, float(ci.low), float(ci.high), n, confidence, "t")


def within(e: Estimate, lo: float, hi: float) -> Estimate:
    """``e`` with its interval clipped to the range [lo, hi] the quantity can take (a t interval over a few
    seeds of a bounded quantity, e.g. an AUROC, can reach past it); the method says so when it clips."""
    low, high = max(e.low, lo), min(e.high, hi)
    if (low, high) == (e.low, e.high) or not (math.isfinite(e.low) and math.isfinite(e.high)):
        return e
    return replace(e, low=low, high=high, method=f"{e.method}, clipped to [{lo:g}, {hi:g}]")


def paired_difference(treatment: Sequence[float], control: Sequence[float],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """treatment[k] - control[k] over the pairs k where both are finite (see :class:`PairedDifference`).

    Raises ValueError when the two sequences differ in length (pairs must be aligned, e.g. by seed)."""
    t = np.asarray([math.nan if x is None else x for x in treatment], dtype=np.float64)
    c = np.asarray([math.nan if x is None else x for x in control], dtype=np.float64)
    if t.shape != c.shape or t.ndim != 1:
        raise ValueError(f"paired values must be two 1-D sequences of one length, got {t.shape} and {c.shape}")
    keep = np.isfinite(t) & np.isfinite(c)
    d = t[keep] - c[keep]
    n = int(d.size)
    wins, ties, losses = int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0, confidence)
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, math.nan, math.nan, math.nan, 1, wins, ties, losses,
                                confidence)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if sd == 0.0:  # every seed moved by the same amount: no spread to test against
        p = 1.0 if mean == 0 else 0.0
        return PairedDifference(mean, 0.0, 0.0, mean, mean, p, n, wins, ties, losses, confidence)
    res = stats.ttest_rel(t[keep], c[keep])
    ci = res.confidence_interval(confidence)
    return PairedDifference(mean, sd, se, float(ci.low), float(ci.high), float(res.pvalue), n, wins, ties, losses,
                            confidence)


def paired_table(values: Mapping[str, Mapping[Any, float]], control: str,
                 confidence: float = CONFIDENCE) -> dict[str, PairedDifference]:
    """{method: paired_difference(method, control)} for every method but ``control``; ``values`` maps
    method -> {seed: value}; pairs are matched by seed (seeds missing on either side are left out)."""
    if control not in values:
        raise KeyError(f"control {control!r} not among {sorted(values)}")
    base = values[control]
    out = {}
    for method, per_seed in values.items():
        if method == control:
            continue
        seeds = sorted(set(per_seed) & set(base), key=str)
        out[method] = paired_difference([per_seed[s] for s in seeds], [base[s] for s in seeds], confidence)
    return out


# ------------------------------------------------------------------------------------------------ bootstrap

def _as_matrix(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """[strata, n] float64 (a 1-D vector is one stratum)."""
    m = np.asarray(a, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"expected scores [n] or [strata, n], got shape {m.shape}")
    return m


def _rank(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.rankdata(x, axis=axis)


def _pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = a - a.mean(axis, keepdims=True)
    b = b - b.mean(axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis) * (b * b).sum(axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis) / np.where(den > 0, den, 1.0), np.nan)


def _spearman_mean(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over strata (axis 0; scipy's bootstrap puts its resample axis after it) of the Spearman correlation
    along ``axis`` (ties averaged)."""
    r = _pearson(_rank(a, axis), _rank(b, axis), axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every stratum undefined -> NaN
        return np.nanmean(r, axis=0)


def _bootstrap(statistic: Callable[..., Any], data: tuple[np.ndarray, ...], paired: bool, vectorized: bool,
               n_resamples: int, confidence: float, seed: int, batch: int | None) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (all ties) give NaN; they are dropped below
        res = stats.bootstrap(data, statistic, paired=paired, vectorized=vectorized, axis=-1,
                              n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(seed), batch=batch)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    if dist.size < 0.9 * n_resamples:  # too many undefined resamples for an honest interval
        return math.nan, math.nan
    q = (1 - confidence) / 2
    return float(np.quantile(dist, q)), float(np.quantile(dist, 1 - q))


def mean_spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman correlation of ``a`` and ``b`` ([n] or [strata, n]) averaged over strata (NaN if undefined)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} differ in shape")
    return float(_spearman_mean(a, b))


def spearman_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """Spearman correlation of ``a`` and ``b`` ([n] or [strata, n], the same sample j in every stratum), averaged
    over strata, with a percentile bootstrap interval resampling the samples (columns) together. n = samples."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} differ in shape")
    value = float(_spearman_mean(a, b))
    if a.shape[1] < 3 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, a.shape[1], confidence, "bootstrap")
    lo, hi = _bootstrap(lambda x, y, axis=-1: _spearman_mean(x, y, axis), (a, b), True, True, n_resamples,
                        confidence, seed, batch=max(1, 2_000_000 // a.size))
    return Estimate(value, lo, hi, a.shape[1], confidence, "bootstrap")


def spearman_difference_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                           target: Sequence[float] | np.ndarray, *, n_resamples: int = N_RESAMPLES,
                           confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """Spearman(a, target) - Spearman(b, target) (each averaged over strata, as :func:`spearman_ci`) with a
    paired percentile bootstrap interval (the three score vectors resampled together). Positive = ``a`` ranks
    closer to ``target``. n = samples."""
    a, b, t = _as_matrix(a), _as_matrix(b), _as_matrix(target)
    if not a.shape == b.shape == t.shape:
        raise ValueError(f"a {a.shape}, b {b.shape} and target {t.shape} differ in shape")

    def diff(x: np.ndarray, y: np.ndarray, z: np.ndarray, axis: int = -1) -> np.ndarray:
        return _spearman_mean(x, z, axis) - _spearman_mean(y, z, axis)

    value = float(diff(a, b, t))
    if a.shape[1] < 3 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, a.shape[1], confidence, "bootstrap")
    lo, hi = _bootstrap(diff, (a, b, t), True, True, n_resamples, confidence, seed,
                        batch=max(1, 2_000_000 // a.size))
    return Estimate(value, lo, hi, a.shape[1], confidence, "bootstrap")


def _kendall_mean(a: np.ndarray, b: np.ndarray) -> float:
    vals = []
    for x, y in zip(a, b):
        if np.all(x == x[0]) or np.all(y == y[0]):
            vals.append(math.nan)
            continue
        vals.append(stats.kendalltau(x, y).statistic)
    v = np.asarray(vals, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def kendall_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_resamples: int = 500,
               confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """Kendall's tau-b of ``a`` and ``b`` (as :func:`spearman_ci`; one scipy call per resample and stratum,
    so fewer resamples by default)."""
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} differ in shape")
    value = _kendall_mean(a, b)
    if a.shape[1] < 3 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, a.shape[1], confidence, "bootstrap")
    lo, hi = _bootstrap(lambda idx: _kendall_mean(a[:, idx], b[:, idx]), (np.arange(a.shape[1]),), False, False,
                        n_resamples, confidence, seed, None)
    return Estimate(value, lo, hi, a.shape[1], confidence, "bootstrap")


def _auroc_mean(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over strata (axis 0) of P(pos > neg) + P(pos = neg) / 2 (the Mann-Whitney AUROC); pos [S, ..., P],
    neg [S, ..., N]."""
    d = pos[..., :, None] - neg[..., None, :]
    auc = (d > 0).mean((-1, -2)) + 0.5 * (d == 0).mean((-1, -2))
    return auc.mean(0)


def auroc_ci(labels: Sequence[bool] | np.ndarray, detector: Sequence[float] | np.ndarray, *,
             n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED) -> AurocEstimate:
    """AUROC of ``detector`` (higher = more likely positive; [n] or [strata, n]) for the positive class of
    ``labels`` [n] (the same samples in every stratum), averaged over strata, with a stratified percentile
    bootstrap interval (positives and negatives resampled separately, as clusters across strata).
    Equals ``sklearn.metrics.roc_auc_score(labels, detector)`` for one stratum. n = samples."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = _as_matrix(detector)
    if s.shape[1] != y.size:
        raise ValueError(f"labels [{y.size}] and detector {s.shape} differ in the number of samples")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return AurocEstimate(math.nan, math.nan, math.nan, int(y.size), confidence, "bootstrap", n_pos, n_neg)
    pos, neg = s[:, y], s[:, ~y]
    value = float(_auroc_mean(pos, neg))
    if n_pos < 2 or n_neg < 2:
        return AurocEstimate(value, math.nan, math.nan, int(y.size), confidence, "bootstrap", n_pos, n_neg)
    lo, hi = _bootstrap(lambda p, q, axis=-1: _auroc_mean(p, q, axis), (pos, neg), False, True, n_resamples,
                        confidence, seed, batch=max(1, 4_000_000 // (s.shape[0] * n_pos * n_neg)))
    return AurocEstimate(value, lo, hi, int(y.size), confidence, "bootstrap", n_pos, n_neg)


__all__ = ["Estimate", "AurocEstimate", "PairedDifference", "mean_ci", "paired_difference", "paired_table",
           "mean_spearman", "spearman_ci", "spearman_difference_ci", "kendall_ci", "auroc_ci", "CONFIDENCE", "N_RESAMPLES"]
