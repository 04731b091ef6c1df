"""The validation suites: bound (theory's error bounds), fidelity (agreement with Exact and the one-step
counterfactual, noisy-sample AUROC) and cost (time and memory against a training step).

    from validation.suites import run_suites
    run_suites(RunDir(path), config, suites=["bound", "fidelity", "cost"], models=["mlp"])

``bound_step`` and ``fidelity_step`` score one step (a :class:`StepContext`); ``cost_point`` measures one
(model, width, batch) point; ``runner`` writes them as resumable units (see validation/results.py).
"""

from .bound import bound_step
from .context import StepContext
from .cost import cost_point
from .counterfactual import one_step_counterfactual
from .fidelity import fidelity_step
from .runner import run_cost, run_suites, run_training_suites

__all__ = ["StepContext", "bound_step", "fidelity_step", "cost_point", "one_step_counterfactual", "run_suites",
           "run_training_suites", "run_cost"]
