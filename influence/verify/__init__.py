"""The capture verifies itself: factored per-sample gradients are checked against autograd on every call.

* Graph check (``influence.paths``; Ghost's default ``verify="paths"``, every capture, reference and training,
  once the signature's verdict is cached): every path from the loss to a factored parameter in autograd's
  graph runs through one of its layer calls. No gradient is computed; the parameters it does not explain (and
  the others of their layers) get the numeric sum check on that capture.
* Sum check (the first capture of each signature; every capture with ``verify="every"``, the reference
  captures with ``verify="reference"``): the factored
  gradients summed over samples must equal autograd's gradient of sum_i l_i, taken in the same
  ``autograd.grad`` call as the layer-output gradients (compared on a random rank-1 projection per block,
  ``influence.projection``, so no [p, q] product is formed; a block that fails is compared in full). A
  parameter used where the factorisation does not see it (read outside its module, a parametrization,
  attention code calling ``F.linear`` on a submodule's weight) fails here, also when the outside use depends on
  the data and shows up only in some training batch long after the verdict was cached (so the training
  capture is checked too: the factored update ``weighted_gradient`` builds from it is then right as well).
  Its cost is autograd's weight gradients of each captured batch (what the check cannot do without: one
  [p, n T] x [n T, q] product per block, reused where the reference side needs the block's sum anyway) plus
  O(n T (p + q)) per block (``python -m validation.bench.verify_cost`` measures both).
* Shape check (``influence.capture``): every recorded call has the batch as its leading dimension.
* Per-sample probe (first call per model and input signature, in place of its sum check): autograd's gradient
  of sum_i w_i l_i, with random weights w, against the factored sum_i w_i G_i (a second backward; the first one
  then computes no weight gradient), screened by the same projections as the sum check. It catches what the sum
  check catches and what sums and shapes cannot: a non-batch leading dimension that happens to equal n, a
  sample whose factored gradient is another's: where any per-sample difference is nonzero, the weighted sums
  differ with probability 1.

The verdict (parameters that failed, with the reason) is cached per model (weakly) and signature: the structure,
dtypes, ranks and size pattern of the batch leaves (not the sizes: a verdict carries over to other batch sizes and
sequence lengths, see ``signature``), train/eval flags, which parameters are trainable, and the registry version.
LAI, which runs no backward, reads it (computing it with one verification capture of a 2-sample slice when
absent).

Tolerances (eps of the parameters' dtype). The full comparisons (probe, and a block whose projection failed)
require ||factored - autograd|| <= sqrt(eps) * (max of the two norms + 1e-2 * the norm of all checked
gradients), per parameter; they, not the projection, decide what is routed. The projection screens for them: with the terms
t_r = (L_r . v)(R_r . u) over samples and tokens r, it flags |sum_r t_r - v^T M u| > tol * (sum_r |t_r| +
|v^T M u|), tol = min(sqrt(eps), 1024 eps) (1.2e-4 in float32, 2.3e-13 in float64). Rounding alone stays far
below: the largest ratio measured over the benchmark workloads and every zoo family is 31 eps (float32 and
float64), so a flag that is rounding only costs a full comparison (which then passes), never a wrong number.
A true difference D = factored - autograd is missed only when |v^T D u| (standard normal v, u: standard
deviation ||D||_F) falls below the flagging threshold tau = tol * (sum |t_r| + |v^T M u|): with probability at
most about (2x / pi) (ln(2 / x) + 0.42), x = tau / sigma_1(D) (exact for a rank-1 D), which goes to 0 with x:
any nonzero difference is detected with probability 1 up to the tolerance. The directions are drawn once per
shape (reproducible verdicts); k of them per block raise the miss probability to the power k: k = 1 in float64
(a tolerance 6.5e4 times below sqrt(eps): misses rarer than with two directions at sqrt(eps) wherever those miss
with probability above 1e-9), 2 in float32 and below (a tolerance 2.8 times below sqrt(eps): rarer everywhere).
"""

from .compare import Checked, probe_check, probe_weights, sum_check
from .settings import DEFAULT, MODES, Verification, check_verify
from .signature import cached, clear, model_state, signature, size_pattern, store
from .verifier import Routed, Verifier, probe_count, verdict_for, verified_capture

__all__ = ["Checked", "DEFAULT", "MODES", "Routed", "Verification", "Verifier", "cached", "check_verify", "clear",
           "model_state", "probe_check", "probe_count", "probe_weights", "signature", "size_pattern", "store",
           "sum_check", "verdict_for", "verified_capture"]
