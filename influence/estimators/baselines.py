"""The data-selection field's per-sample baselines, as registered estimators: ``loss``, ``el2n``, ``grad-norm``.

These are rankings, not influence: they ignore the reference batch (a session still takes one, or ``ref=None``)
and are oriented so that a larger score ranks a sample as more worth keeping, as the field uses them (small loss,
small error, small gradient first). Their scores are never positive, so the sign rule that reads influence
(keep a sample whose step lowers the reference loss: score >= 0) does not apply to them: select by rank or by
quantile.

* ``loss``: -l_i (the small-loss criterion); a forward only.
* ``el2n``: -||g_i||_2 with g_i = dl_i/df_i from the outputs (``influence.losses.output_gradient``): for
  cross-entropy with integer labels ||softmax(f_i) - onehot(y_i)||_2, the EL2N score of Paul et al. (2021) at
  the current weights; for sequences the flattened per-sample g (token gradients divided by the sample's number of
  counted tokens, as the loss averages them); a forward only.
* ``grad-norm``: -lr * ||grad l_i||^2 (self-influence, as in TracIn's self-influence and gradient-norm selection)
  from Ghost's factored per-sample products (one forward and backward), with the parameters Ghost cannot factor
  scored by Exact's per-sample gradients inside this backend.

Pairwise products (``pairwise=True``) are refused (``NotPairwiseError``): these scores have no reference column.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..batch import Batch, LossFn, call_model, output_tensor
from ..capture import plan
from ..errors import InfluenceError, NotPairwiseError
from ..losses import output_gradient
from ..result import Chunk
from ..scoring import DEFAULT_BUDGET, self_products
from .exact import ExactBackend
from .ghost import GhostBackend
from .protocol import BaseBackend, Routed, Settings
from .registry import Capabilities, Estimator


class OutputScoreBackend(BaseBackend):
    """``loss`` (-l_i) or ``el2n`` (-||dl_i/df_i||_2) from one forward without autograd; the reference is ignored."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, kind: str) -> None:
        plan(model)  # the modes (BatchNorm or dropout in train mode) are refused as for every estimator
        self.model, self.loss_fn, self.lr, self.kind, self.estimator = model, loss_fn, lr, kind, kind

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        return None

    def add_reference(self, batch: Batch, n: int) -> Routed:
        return {}  # the reference is not read

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        x, y = batch
        with torch.no_grad():
            f = output_tensor(call_model(self.model, x))
        losses, g = output_gradient(self.loss_fn, f, y, "train")
        s = -losses if self.kind == "loss" else -g.reshape(n, -1).norm(dim=1)
        return Chunk({self.kind: s}, losses, outputs=f)

    def self_products(self, batch: Batch, n: int) -> Tensor:
        raise InfluenceError(f"{self.kind} has no per-sample gradient products (self-influence): use grad-norm")


class GradNormBackend(BaseBackend):
    """``grad-norm``: -lr * ||grad l_i||^2 from Ghost's factored per-sample gradients; the parameters Ghost cannot
    factor (its plan, or a capture's verification) are added from Exact's per-sample gradients here, so nothing is
    handed to the session (whose Exact would add influence, not a norm)."""

    estimator = "grad-norm"

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, mode: str = "auto",
                 fallback: str | None = "auto", memory_budget: int | None = DEFAULT_BUDGET, verify="paths") -> None:
        self.model, self.loss_fn, self.lr, self.budget = model, loss_fn, lr, memory_budget
        self.ghost = GhostBackend(model, loss_fn, lr, mode=mode, fallback=fallback, memory_budget=memory_budget,
                                  verify=verify)
        self.reported: frozenset | None = None

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        return None

    def add_reference(self, batch: Batch, n: int) -> Routed:
        return {}  # the reference is not read

    def report(self) -> None:
        routed = frozenset(self.ghost.routed)
        if routed != self.reported:
            self.ghost.report()
            self.reported = routed

    def _products(self, batch: Batch, n: int) -> tuple[Tensor, Tensor]:
        """(lr * ||grad l_i||^2 [n], losses [n])."""
        ghost = self.ghost
        for _ in range(len(ghost.pl.names) + 2):
            cap, blocks, new = ghost.verifier.capture(batch, n, "train", ghost.routed, reference=True)
            if not new:
                break
            ghost.routed.update(new)
        else:
            raise InfluenceError("grad-norm: the factorisation kept finding new unfactorable parameters; use Exact")
        parts = [self_products(blocks[key], self.budget) for key in blocks]
        total = self.lr * sum(parts) if parts else cap.losses.new_zeros(n)
        names = ghost.routed_names()
        if names:
            exact = ExactBackend(self.model, self.loss_fn, self.lr, params=names, memory_budget=self.budget)
            total = total + exact.self_products(batch, n).to(total.dtype)
        self.report()
        return total, cap.losses

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        total, losses = self._products(batch, n)
        return Chunk({"grad-norm": -total}, losses)

    def self_products(self, batch: Batch, n: int) -> Tensor:
        return self._products(batch, n)[0]


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed, *, kind: str) -> BaseBackend:
    if s.pairwise:
        raise NotPairwiseError(f"{kind} is a per-sample ranking that ignores the reference; it has no pairwise "
                               "train-reference products (use pairwise=False)")
    if kind == "grad-norm":
        b = GradNormBackend(model, loss_fn, s.lr, mode=s.mode, fallback=s.fallback, memory_budget=s.budget,
                            verify=s.verify)
        b.ghost.routed.update(routed)
        return b
    return OutputScoreBackend(model, loss_fn, s.lr, kind=kind)


IGNORES = "; the reference batch is ignored (a ranking, larger = keep; never positive, so not for the sign rule)"
ENTRIES = (
    Estimator("loss", "Loss", functools.partial(build, kind="loss"),
              Capabilities(needs_backward=False, self_reference=True, influence=False), family="baseline",
              description="-loss_i: small loss ranks high" + IGNORES),
    Estimator("el2n", "EL2N", functools.partial(build, kind="el2n"),
              Capabilities(needs_backward=False, self_reference=True, influence=False), family="baseline",
              description="-||dl_i/df_i||_2 (cross-entropy: -||softmax - onehot||_2)" + IGNORES),
    Estimator("grad-norm", "Gradient norm", functools.partial(build, kind="grad-norm"),
              Capabilities(needs_backward=True, self_reference=True, influence=False), family="baseline",
              description="-lr * ||grad l_i||^2 (self-influence, from Ghost's per-sample products)" + IGNORES),
)
