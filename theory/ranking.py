"""What per-sample bounds Delta_i >= |Ghost_i - LAI_i| guarantee about rankings and the "score >= 0" filter.

Corollary. If |LAI_i - Ghost_i| <= Delta_i for every i, then

* every pair with |Ghost_i - Ghost_j| > Delta_i + Delta_j is strictly concordant: LAI_i - LAI_j has the sign of
  Ghost_i - Ghost_j (|(LAI_i - LAI_j) - (Ghost_i - Ghost_j)| <= Delta_i + Delta_j);
* every sample with |Ghost_i| > Delta_i has LAI_i of the same strict sign, so the filter keep = (score >= 0)
  takes the same decision on LAI as on Ghost.

With N = n(n-1)/2 pairs of which k are guaranteed concordant, tau_lb = (2k - N) / N is a lower bound on
Kendall's tau between LAI and Ghost: for tau-a directly (the other N - k pairs count at worst as discordant),
and for tau-b (scipy's default, with ties) as well: with t pairs tied in either ranking, C - D >= 2k - N + t
and the tau-b denominator lies in [N - t, N]; if C - D >= 0 then tau_b >= (C - D)/N >= tau_lb, else
tau_b >= (2k - N + t)/(N - t) >= (2k - N)/N (cross-multiplying, this is t (2k) >= 0).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from influence.errors import InvalidArgumentError


def _as_float64(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x), dtype=torch.float64)
    if t.dim() != 1:
        raise InvalidArgumentError(f"expected a vector [n], got shape {tuple(t.shape)}")
    return t


def guaranteed_concordant(ghost_scores: Tensor | np.ndarray, bounds: Tensor | np.ndarray) -> Tensor:
    """[n, n] bool: pairs (i, j) with |G_i - G_j| > Delta_i + Delta_j (their order is the same under LAI)."""
    g, d = _as_float64(ghost_scores), _as_float64(bounds)
    if g.shape != d.shape:
        raise InvalidArgumentError(f"ghost_scores {tuple(g.shape)} and bounds {tuple(d.shape)} differ in shape")
    if (d < 0).any():
        raise InvalidArgumentError("bounds must be non-negative")
    return (g[:, None] - g[None, :]).abs() > d[:, None] + d[None, :]


def kendall_lower_bound(ghost_scores: Tensor | np.ndarray, bounds: Tensor | np.ndarray) -> float:
    """Guaranteed lower bound on Kendall's tau (a or b) between LAI and Ghost scores, given per-sample bounds
    Delta_i >= |LAI_i - Ghost_i| (``theory.data_bound`` or ``theory.apriori_bound``). Needs n >= 2."""
    ok = guaranteed_concordant(ghost_scores, bounds)
    n = ok.shape[0]
    if n < 2:
        raise InvalidArgumentError("Kendall's tau needs at least two samples")
    total = n * (n - 1) // 2
    k = int(torch.triu(ok, diagonal=1).sum())
    return (2 * k - total) / total


def guaranteed_filter_accuracy(ghost_scores: Tensor | np.ndarray, bounds: Tensor | np.ndarray) -> float:
    """Guaranteed fraction of samples on which the filter keep = (score >= 0) decides the same on LAI as on
    Ghost: the fraction with |G_i| > Delta_i."""
    g, d = _as_float64(ghost_scores), _as_float64(bounds)
    if g.shape != d.shape or g.numel() == 0:
        raise InvalidArgumentError("ghost_scores and bounds must be non-empty vectors of the same shape")
    return float((g.abs() > d).double().mean())


def filter_agreement(ghost_scores: Tensor | np.ndarray, lai_scores: Tensor | np.ndarray) -> float:
    """Measured fraction of samples where keep = (score >= 0) agrees between Ghost and LAI."""
    g, a = _as_float64(ghost_scores), _as_float64(lai_scores)
    return float(((g >= 0) == (a >= 0)).double().mean())
