"""What the estimators do with parameters the factorisation cannot cover ("routed"): refuse them with the named
error (``fallback='error'``) or warn once naming them (``'auto'``; ``'exact'`` is silent). Ghost scores them with
Exact, LAI skips them."""

from __future__ import annotations

import warnings
from collections import defaultdict

from .capture import Plan
from .errors import RoutedToExactWarning, SharedParameterError, UnsupportedLayerError, VerificationError


def raise_routed(pl: Plan, routed: dict[int, tuple[str, str]]) -> None:
    """Raise the named error for the first kind of routed parameter (``fallback='error'``)."""
    if not routed:
        return
    by_kind: dict[str, list[str]] = defaultdict(list)
    for pid, (kind, why) in routed.items():
        by_kind[kind].append(f"{pl.names.get(pid, '?')} ({why})")
    if "shared" in by_kind:
        raise SharedParameterError(f"{'; '.join(by_kind['shared'])}. Untie the parameter, use influence.exact, or "
                                   "fallback='auto' to score it with Exact")
    if "unsupported" in by_kind:
        raise UnsupportedLayerError(
            f"trainable layers without a fast-path factorisation: {'; '.join(by_kind['unsupported'])}. Pass "
            "fallback='auto' (or 'exact') to score their parameters with per-sample gradients from torch.func, or "
            "freeze them (requires_grad=False).")
    raise VerificationError(
        f"factored per-sample gradients do not match autograd for: {'; '.join(by_kind['verify'])}. Pass "
        "fallback='auto' to score these parameters with Exact.")


def report_routed(pl: Plan, routed: dict[int, tuple[str, str]], estimator: str, action: str) -> list[str]:
    """Names of the routed parameters; raises (``fallback='error'``) or warns once naming them (``'auto'``)."""
    if not routed:
        return []
    if pl.fallback == "error":
        raise_routed(pl, routed)
    names = [pl.names[k] for k in routed]
    if pl.fallback == "auto":
        reasons = "; ".join(sorted({why for _, why in routed.values()}))
        warnings.warn(f"influence.{estimator}: {len(names)} parameter(s) {action}: {', '.join(names)}. Why: "
                      f"{reasons}. Pass fallback='exact' to silence this warning or fallback='error' to refuse.",
                      RoutedToExactWarning, stacklevel=4)
    return names
