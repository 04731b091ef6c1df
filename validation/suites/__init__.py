"""``lai run`` (``command``) and the experiments: the validation suites bound (theory's error bounds), fidelity
(agreement with Exact and the one-step counterfactual, noisy-sample AUROC) and cost (time and memory against a training step); ``tightness``
(``lai tightness``: how tight the bounds are); ``counterfactual`` (the one-step retraining target) and
``lai_variants`` (research-only LAI variants such as ``lai-fit``, scored beside the registered estimators).

    from validation.suites import run_suites
    run_suites(RunDir(path), config, suites=["bound", "fidelity", "cost"], models=["mlp"])

``bound_step`` and ``fidelity_step`` score one step (a :class:`StepContext`); ``cost_point`` measures one
(model, width, batch) point; ``runner`` writes them as resumable units (see validation/report/results.py).
The names below are imported on first use, so ``lai tightness --help`` needs none of the suites' extras.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"bound_step": "bound", "StepContext": "context", "cost_point": "cost",
          "one_step_counterfactual": "counterfactual", "fidelity_step": "fidelity", "run_cost": "runner",
          "run_suites": "runner", "run_training_suites": "runner"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["StepContext", "bound_step", "fidelity_step", "cost_point", "one_step_counterfactual", "run_suites",
           "run_training_suites", "run_cost"]
