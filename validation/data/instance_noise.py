"""Pair-flip and instance-dependent label noise, seeded and recorded like :mod:`validation.noise`.

Same arguments (seed included) give identical results; every record's ``is_noisy`` is exactly
``y_noisy != y_clean``, and exactly round(rate * n) labels change.

Instance-dependent noise (:func:`instance_dependent_label_noise`) flips labels toward what a weak classifier
confuses. A deliberately weak classifier is fitted on the clean labels of a seeded, stratified subset of
``fit_size`` samples (default 500): by default ``"pca-logreg"``, a multinomial logistic regression (C = 1) on
the first 10 principal components of the flattened pixels, which on the 4,000 real MNIST training digits of
:func:`validation.data.mnist_real.load_mnist_real` is right on about 78 % of them. Its predicted
probabilities p(. | x) give each sample a confusion 1 - p(y_clean | x). Exactly round(rate * n) samples are
drawn without replacement with probability proportional to their confusion (a seeded sequential weighted draw),
and each drawn sample's label becomes the class the classifier finds most probable among the wrong ones,
argmax_{c != y_clean} p(c | x). So ambiguous images are the ones relabelled, and they are relabelled as the
digit they resemble, which is what a hurried annotator does; the noise is not a function of the class alone
(two 4s get different fates), and its class-level transition matrix is only the empirical one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .noise import NoiseRecord, _check_rate, _labels

CLASSIFIERS = ("pca-logreg", "logreg")
DEFAULT_FIT_SIZE = 500
PCA_COMPONENTS = 10
CONFUSION_FLOOR = 1e-12  # keeps every sample drawable, so round(rate * n) draws always exist


def empirical_transition(y_clean: torch.Tensor, y_noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 [K, K]: row c is the distribution of the noisy label over the class-c samples (identity row for a
    class with no sample), so every row sums to 1."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((y_clean, y_noisy), torch.ones(len(y_clean), dtype=torch.float64), accumulate=True)
    totals = counts.sum(1, keepdim=True)
    return torch.where(totals > 0, counts / totals.clamp(min=1), torch.eye(num_classes, dtype=torch.float64))


def pair_flip_label_noise(y: Any, rate: float, num_classes: int, seed: int = 0) -> NoiseRecord:
    """Pair-flip ("pairflip") noise: exactly round(rate * n) labels, chosen by a seeded permutation, become
    (c + 1) mod K. ``transition`` is the nominal matrix (1 - rate) I + rate P, P the cyclic shift (each sample is
    flipped with probability round(rate * n) / n); ``meta["empirical_transition"]`` holds the realised one."""
    _check_rate(rate)
    y = _labels(y, num_classes)
    n_flip = int(round(rate * len(y)))
    if n_flip and num_classes < 2:
        raise ValueError("pair-flip noise needs at least 2 classes")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_flip]
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + 1) % num_classes
    transition = torch.eye(num_classes, dtype=torch.float64) * (1.0 - rate)
    transition[torch.arange(num_classes), (torch.arange(num_classes) + 1) % num_classes] += rate
    return NoiseRecord(y_noisy, y_noisy != y, y, rate, "pair_flip", seed, num_classes, transition,
                       meta={"mapping": [(c + 1) % num_classes for c in range(num_classes)],
                             "empirical_transition": empirical_transition(y, y_noisy, num_classes).tolist()})


def _features(x: Any) -> np.ndarray:
    """float64 [n, d]: each sample flattened."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.reshape(len(a), -1).astype(np.float64)


def _sk_seed(seed: int) -> int:
    """``seed`` as a scikit-learn ``random_state`` (which takes 0..2**32 - 1): reduced mod 2**32, so the 63-bit
    streams of ``validation.curation.seeds`` work (a seed below 2**32 is unchanged)."""
    return int(seed) % 2**32


def _fit_subset(y: np.ndarray, fit_size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``fit_size`` samples, stratified by class where possible."""
    n = len(y)
    if fit_size >= n:
        return np.arange(n)
    from sklearn.model_selection import train_test_split
    try:
        idx, _ = train_test_split(np.arange(n), train_size=fit_size, stratify=y, random_state=_sk_seed(seed))
    except ValueError:  # a class too small to stratify: a plain seeded subset
        idx = np.random.default_rng(seed).permutation(n)[:fit_size]
    return np.sort(idx)


def _make_classifier(classifier: Any, seed: int) -> tuple[Any, str, dict[str, Any]]:
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if classifier == "pca-logreg":
        params = {"pca_components": PCA_COMPONENTS, "C": 1.0}
        return (make_pipeline(PCA(PCA_COMPONENTS, svd_solver="full", random_state=_sk_seed(seed)),
                              LogisticRegression(C=1.0, max_iter=2000)), classifier, params)
    if classifier == "logreg":  # raw pixels, strongly regularised
        params = {"C": 0.01}
        return LogisticRegression(C=0.01, max_iter=2000), classifier, params
    if isinstance(classifier, str):
        raise ValueError(f"unknown classifier {classifier!r}; choose from {CLASSIFIERS} or pass a scikit-learn "
                         "estimator with fit/predict_proba")
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")):
        raise TypeError("classifier must be a name or a scikit-learn estimator with fit and predict_proba")
    return clone(classifier), type(classifier).__name__, {"repr": repr(classifier)}


def weak_classifier_proba(x: Any, y: Any, num_classes: int, seed: int = 0, classifier: Any = "pca-logreg",
                          fit_size: int = DEFAULT_FIT_SIZE) -> tuple[np.ndarray, dict[str, Any]]:
    """The weak classifier of :func:`instance_dependent_label_noise`, fitted on the clean labels of a seeded
    stratified subset of ``fit_size`` samples. Returns (probabilities float64 [n, K], info) with info: the
    classifier's name and parameters, ``fit_size``, ``accuracy`` (on all n samples) and ``heldout_accuracy`` (on
    the samples not fitted; None if all were). A class absent from the fitted subset gets probability 0.

    ``classifier``: ``"pca-logreg"`` (default; logistic regression, C = 1, on the first 10 principal components),
    ``"logreg"`` (logistic regression on the raw pixels, C = 0.01) or a scikit-learn estimator (cloned)."""
    feats = _features(x)
    y = _labels(y, num_classes).numpy()
    if len(feats) != len(y):
        raise ValueError(f"x has {len(feats)} samples, y {len(y)}")
    if fit_size < 1:
        raise ValueError(f"fit_size must be positive, got {fit_size}")
    fit = _fit_subset(y, fit_size, seed)
    model, name, params = _make_classifier(classifier, seed)
    model.fit(feats[fit], y[fit])
    proba = np.zeros((len(y), num_classes), dtype=np.float64)
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(feats)
    correct = proba.argmax(1) == y
    held = np.ones(len(y), dtype=bool)
    held[fit] = False
    info = {"classifier": name, "classifier_params": params, "fit_size": int(len(fit)),
            "accuracy": float(correct.mean()) if len(y) else float("nan"),
            "heldout_accuracy": float(correct[held].mean()) if held.any() else None}
    return proba, info


def instance_dependent_label_noise(x: Any, y: Any, rate: float, num_classes: int, seed: int = 0,
                                   classifier: Any = "pca-logreg", fit_size: int = DEFAULT_FIT_SIZE) -> NoiseRecord:
    """Instance-dependent noise toward what a weak classifier confuses (module docstring).

    ``x``: samples [n, ...] (flattened for the classifier); ``y``: clean labels [n]. Exactly round(rate * n)
    samples are drawn without replacement with probability proportional to 1 - p(y_clean | x) (floored at 1e-12)
    and relabelled argmax_{c != y_clean} p(c | x), p from :func:`weak_classifier_proba` (same ``seed``,
    ``classifier``, ``fit_size``). ``transition`` is the empirical matrix; ``meta`` records the classifier, its
    parameters and accuracy, and the mean confusion of the flipped and of the kept samples.
    """
    _check_rate(rate)
    y_clean = _labels(y, num_classes)
    n = len(y_clean)
    n_flip = int(round(rate * n))
    if n_flip and num_classes < 2:
        raise ValueError("instance-dependent noise needs at least 2 classes")
    proba, info = weak_classifier_proba(x, y_clean, num_classes, seed, classifier, fit_size)
    yc = y_clean.numpy()
    rows = np.arange(n)
    confusion = 1.0 - proba[rows, yc]
    weights = np.maximum(confusion, CONFUSION_FLOOR)
    chosen = np.random.default_rng(seed).choice(n, size=n_flip, replace=False, p=weights / weights.sum()) \
        if n_flip else np.empty(0, dtype=np.int64)
    wrong = proba.copy()
    wrong[rows, yc] = -np.inf
    y_noisy = y_clean.clone()
    y_noisy[torch.from_numpy(np.sort(chosen))] = torch.from_numpy(wrong.argmax(1)[np.sort(chosen)])
    is_noisy = y_noisy != y_clean
    flipped = is_noisy.numpy()
    meta = {**info, "transition": "empirical",
            "mean_confusion_flipped": float(confusion[flipped].mean()) if flipped.any() else None,
            "mean_confusion_kept": float(confusion[~flipped].mean()) if (~flipped).any() else None}
    return NoiseRecord(y_noisy, is_noisy, y_clean, rate, "instance_dependent", seed, num_classes,
                       empirical_transition(y_clean, y_noisy, num_classes), meta)
