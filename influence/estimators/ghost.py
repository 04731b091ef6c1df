"""Ghost influence: exact per-layer inner products from one forward and one truncated backward pass.

``GhostBackend`` is what a :class:`influence.Session` drives (reference statistics once, then any number of
training batches); :func:`influence.ghost` is the one-call form, a session over one reference batch.
"""

from __future__ import annotations

from typing import Callable, Hashable, Mapping

from torch import Tensor, nn

from ..batch import Batch, LossFn
from ..capture import plan
from ..errors import InfluenceError
from ..factors import Block
from ..result import Chunk, InfluenceResult
from ..routing import raise_routed, report_routed
from ..scoring import DEFAULT_BUDGET, ReferenceSide
from ..verify import Verification, Verifier, check_verify
from .factored import FactoredBackend
from .protocol import Routed, Settings
from .registry import Capabilities, Estimator


def weighted_gradient(blocks: dict[Hashable, Block]):
    """``weighted_gradient(w)``: sum_i w_i grad l_i for every factored parameter, from the recorded factors (no
    second backward)."""
    def gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        out = []
        for block in blocks.values():
            out += list(zip(block.params, block.unpack(block.matrix(weights))))
        return out
    return gradient


class GhostBackend(FactoredBackend):
    """Ghost's reference statistics and training-batch scores for one model and loss.

    ``routed`` holds the parameters the factorisation cannot cover (plan, cached verification verdicts, and what a
    capture finds: that is returned to the session, which rebuilds the reference side with them routed).
    ``preconditioner``: {parameter name: P} applied to the mean reference gradient (contracted form)."""

    estimator = "ghost"

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, mode: str = "auto",
                 fallback: str | None = "auto", memory_budget: int | None = DEFAULT_BUDGET,
                 preconditioner: Mapping[str, Tensor] | None = None,
                 verify: str | Verification = "paths") -> None:
        self.model, self.loss_fn, self.lr, self.mode, self.budget = model, loss_fn, lr, mode, memory_budget
        self.pl = plan(model, fallback)
        self.verifier = Verifier(model, loss_fn, self.pl, check_verify(verify))
        if self.pl.fallback == "error":
            raise_routed(self.pl, self.pl.routed)
        self.routed: Routed = dict(self.pl.routed)
        ids = {n: id(p) for n, p in model.named_parameters()}
        self.preconditioner = {ids[k]: v for k, v in (preconditioner or {}).items() if k in ids}
        self.side: ReferenceSide | None = None

    def routed_names(self) -> list[str]:
        return [self.pl.names[k] for k in self.routed]

    def report(self) -> None:
        """Warn once about (or, with ``fallback='error'``, refuse) the parameters handed to Exact."""
        report_routed(self.pl, self.routed, "ghost", "not factorable, scored by Exact")

    def start(self, n_train: int, pairwise: bool, streamed: bool) -> None:
        pre = {k: v for k, v in self.preconditioner.items() if k not in self.routed}
        self.side = ReferenceSide(n_train, pairwise, self.mode, self.budget, streamed, pre)

    def add_reference(self, batch: Batch, n: int) -> Routed:
        cap, blocks, new = self.verifier.capture(batch, n, "ref", self.routed, reference=True)
        if not new:
            self.side.add(blocks, n, cap.checked)
        return new

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` against the reference side, or (``self_reference``) against the batch itself from
        the same capture. ``keep_graph`` is not needed: the update is built from the recorded factors. (A cached
        verdict naming parameters not yet routed comes back from the verifier as new failures, returned in
        ``Chunk.reroute`` like a failure found now.)"""
        cap, blocks, new = self.verifier.capture(batch, n, "train", self.routed, reference=self_reference)
        if new:
            return Chunk({}, cap.losses, reroute=new)
        if self_reference:
            self.start(n, self.side.pairwise, False)
            self.side.add(blocks, n, cap.checked)
        named = {k: self.lr * v for k, v in self.side.by_name(self.side.score(blocks, n, cap.losses)).items()}
        return Chunk(named, cap.losses, blocks=blocks)


    def train_blocks(self, batch: Batch, n: int) -> dict:
        """The factored per-sample gradients of ``batch`` (self-influence), verified like a reference capture."""
        _, blocks, new = self.verifier.capture(batch, n, "train", self.routed, reference=True)
        if new:
            raise InfluenceError("self-influence: parameters became unfactorable on this batch; use Exact")
        return blocks

    def update_gradient(self, result: InfluenceResult, chunk: Chunk) -> Callable:
        return weighted_gradient(chunk.blocks)


def build(model: nn.Module, loss_fn: LossFn, s: Settings, routed: Routed) -> GhostBackend:
    b = GhostBackend(model, loss_fn, s.lr, mode=s.mode, fallback=s.fallback, memory_budget=s.budget,
                     preconditioner=s.preconditioner, verify=s.verify)
    b.routed.update(routed)
    return b


ENTRIES = (
    Estimator("ghost", "Ghost", build, Capabilities(preconditioner=True, self_reference=True, exact=True),
              family="ghost", description="per-layer Gram products, equal to Exact on supported layers"),
)
