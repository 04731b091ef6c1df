"""Which layers to score, and one pass that records their inputs (and output gradients), split by concern:

* ``modes``: BatchNorm and stochastic modules in train mode, refused (``check_modes``, ``STOCHASTIC``);
* ``planning``: the plan of a model (``plan``, ``Plan``) and its cache (``plan_key``, ``clear_plans``);
* ``output``: LAI's and TracIn's output layer (``output_layer``);
* ``calls``: what a pass recorded (``Call``, ``Capture``);
* ``record``: the recorder and its forward shadowing (``capture_forward``, ``capture_backward``);
* ``broadcast``: per-sample output gradients of a call shared by the whole batch;
* ``factorise``: a capture's per-sample gradients as blocks of outer products (``factor_blocks``, ``dense_grad``).
"""

from .calls import Call, Capture
from .factorise import dense_grad, factor_blocks
from .modes import STOCHASTIC, check_batchnorm, check_modes, check_stochastic
from .output import output_layer
from .planning import FALLBACKS, Factoring, Plan, check_fallback, clear_plans, plan, plan_key
from .record import Recorder, capture_backward, capture_forward

__all__ = [
    "STOCHASTIC", "check_batchnorm", "check_stochastic", "check_modes", "FALLBACKS", "Factoring", "Plan",
    "check_fallback", "plan", "plan_key", "clear_plans", "output_layer", "Call", "Capture", "Recorder",
    "capture_forward", "capture_backward", "dense_grad", "factor_blocks",
]
