"""When a curated-training comparison has converged, and the noise rate estimated from the data.

:func:`plateaued` is the plateau rule a run is checked against (on its clean-validation curve);
:func:`convergence` records it with the best-validation epoch; :func:`estimate_noise_rate` gives small-loss-est its
drop rate tau from the per-sample training losses (a two-component Gaussian mixture, as in DivideMix).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .tasks import Prepared

#: The plateau rule (:func:`plateaued`): the best clean-validation value of the last ``PLATEAU_FRACTION`` of the
#: epochs (at least ``PLATEAU_MIN_EPOCHS``) beats the best before them by less than ``PLATEAU_TOL`` (1 pp).
PLATEAU_FRACTION, PLATEAU_MIN_EPOCHS, PLATEAU_TOL = 0.2, 3, 0.01
#: Methods whose ramped drop rate tau is estimated from the data (:func:`estimate_noise_rate`), not the task's
#: true noise rate (the oracle rate small-loss is handed).
ESTIMATED_RATE = ("small-loss-est",)
MAX_ESTIMATED_RATE = 0.9  # ramped_drop_rate needs tau < 1


def plateaued(curve: list[float], fraction: float = PLATEAU_FRACTION, min_epochs: int = PLATEAU_MIN_EPOCHS,
              tol: float = PLATEAU_TOL, higher_is_better: bool = True) -> tuple[bool, float]:
    """The plateau rule: has the per-epoch ``curve`` (a clean-validation accuracy) stopped improving?

    The window is the last w = max(``min_epochs``, ceil(``fraction`` * epochs)) epochs; the gain is the best value
    in the window minus the best value before it (negated for a lower-is-better metric such as perplexity), so
    a curve that still sets new highs gains, one that peaked earlier (memorising noisy labels) gains <= 0. The
    rule holds when the gain is < ``tol`` (1 pp of accuracy by default). Returns (held, gain); a curve with no
    epoch before the window cannot show a plateau: (False, nan)."""
    n = len(curve)
    w = max(min_epochs, math.ceil(fraction * n))
    if n <= w:
        return False, float("nan")
    best = max if higher_is_better else min
    gain = best(curve[-w:]) - best(curve[:-w])
    gain = gain if higher_is_better else -gain
    return gain < tol, float(gain)


def plateau_window(epochs: int, fraction: float = PLATEAU_FRACTION, min_epochs: int = PLATEAU_MIN_EPOCHS) -> int:
    """Epochs in the window of :func:`plateaued` for a run of ``epochs`` epochs."""
    return max(min_epochs, math.ceil(fraction * epochs))


def convergence(curve: list[float], val_curve: list[float], higher_is_better: bool = True) -> dict[str, Any]:
    """A unit's convergence fields: the clean-validation curve, its best epoch (0-based, the first on ties), the
    test metric there (``best_val_test``), and the plateau rule on the validation curve (``plateau_held``,
    ``plateau_gain``, ``plateau_window`` epochs) and, for reference, on the test curve."""
    pick = max if higher_is_better else min
    best = val_curve.index(pick(val_curve)) if val_curve else None
    held, gain = plateaued(val_curve, higher_is_better=higher_is_better)
    test_held, test_gain = plateaued(curve, higher_is_better=higher_is_better)
    return {"val_curve": val_curve, "best_val_epoch": best, "best_val": val_curve[best] if best is not None else None,
            "best_val_test": curve[best] if best is not None else None,
            "plateau_held": held, "plateau_gain": None if math.isnan(gain) else gain,
            "plateau_window": plateau_window(len(val_curve)),
            "plateau_test_held": test_held, "plateau_test_gain": None if math.isnan(test_gain) else test_gain}


@torch.no_grad()
def training_losses(model: torch.nn.Module, prep: Prepared, batch_size: int = 512) -> Tensor:
    """Per-sample loss float [n_train] of ``model`` on the (noisy-labelled) training set (token losses averaged
    per sequence)."""
    x, y = prep.train
    out = []
    for i in range(0, len(y), batch_size):
        loss = prep.loss_fn(model(x[i:i + batch_size]), y[i:i + batch_size])
        out.append(loss.reshape(len(loss), -1).mean(1) if loss.dim() > 1 else loss)
    return torch.cat(out).detach().float()


def estimate_noise_rate(losses: Tensor, seed: int = 0) -> dict[str, Any]:
    """The noise rate of a training set estimated from its per-sample losses (DivideMix's split): a 2-component
    1-D Gaussian mixture (scikit-learn, EM, ``reg_covar`` 5e-4, ``seed``) fitted to the losses clipped at their
    99th percentile (a few huge losses would squash the rest) and min-max scaled to [0, 1]; the rate is the
    fraction of samples whose posterior of the higher-mean component exceeds 0.5 (capped at
    ``MAX_ESTIMATED_RATE``). Returns {"rate", "means" (of the components, in clipped loss units), "weights",
    "n"}; losses that do not vary give rate 0.

    It counts the samples the model fits badly, so it estimates the noise rate only once the model fits the
    clean samples: on MNIST-1D's MLP in its first epochs (clean accuracy 15-35 %) it gives 0.6-0.9 at 40 %
    noise."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    v = losses.detach().double().flatten().cpu().numpy()
    v = np.minimum(v, np.quantile(v, 0.99))
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return {"rate": 0.0, "means": None, "weights": None, "n": len(v), "method": "gmm2"}
    z = ((v - lo) / (hi - lo)).reshape(-1, 1)
    gmm = GaussianMixture(2, max_iter=100, tol=1e-4, reg_covar=5e-4, random_state=seed).fit(z)
    means = gmm.means_.flatten()
    noisy = int(means.argmax())
    rate = float((gmm.predict_proba(z)[:, noisy] > 0.5).mean())
    return {"rate": min(rate, MAX_ESTIMATED_RATE), "means": [lo + (hi - lo) * float(m) for m in means],
            "weights": [float(w) for w in gmm.weights_], "n": len(v), "method": "gmm2"}
