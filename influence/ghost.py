"""Ghost influence: exact per-layer inner products from one forward and one truncated backward pass.

``GhostBackend`` is what a :class:`influence.Session` drives (reference statistics once, then any number of
training batches); :func:`ghost` is the one-call form, a session over one reference batch.
"""

from __future__ import annotations

from typing import Hashable, Mapping

from torch import Tensor, nn

from .batch import Batch, LossFn
from .capture import plan
from .routing import raise_routed, report_routed
from .checks import check_batch
from .factors import Block
from .result import Chunk, InfluenceResult, Reroute
from .scoring import DEFAULT_BUDGET, ReferenceSide
from .verify import Routed, check_verify, verified_capture


def weighted_gradient(blocks: dict[Hashable, Block]):
    """``weighted_gradient(w)``: sum_i w_i grad l_i for every factored parameter, from the recorded factors (no
    second backward)."""
    def gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        out = []
        for block in blocks.values():
            out += list(zip(block.params, block.unpack(block.matrix(weights))))
        return out
    return gradient


class GhostBackend:
    """Ghost's reference statistics and training-batch scores for one model and loss.

    ``routed`` holds the parameters the factorisation cannot cover (plan, cached verification verdicts, and what a
    capture finds: then :class:`Reroute` is raised and the session rebuilds the reference with them routed).
    ``preconditioner``: {parameter name: P} applied to the mean reference gradient (contracted form)."""

    estimator = "ghost"

    def __init__(self, model: nn.Module, loss_fn: LossFn, lr: float, *, mode: str = "auto",
                 fallback: str | None = "auto", memory_budget: int | None = DEFAULT_BUDGET,
                 preconditioner: Mapping[str, Tensor] | None = None, verify: str = "paths") -> None:
        self.model, self.loss_fn, self.lr, self.mode, self.budget = model, loss_fn, lr, mode, memory_budget
        self.verify = check_verify(verify)
        self.pl = plan(model, fallback)
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

    def add_reference(self, batch: Batch, n: int) -> None:
        cap, blocks, new = verified_capture(self.model, self.loss_fn, batch, self.pl, n, "ref", self.routed,
                                            check=self.capture_check(reference=True))
        if new:
            raise Reroute(new)
        self.side.add(blocks, n, cap.checked)

    def capture_check(self, reference: bool) -> bool | str:
        """How a capture is checked once its signature's verdict is cached (``verified_capture``'s ``check``) under
        this backend's ``verify``: a reference capture (or a training batch that is its own reference, or scored
        against itself) always, a training capture unless ``verify="reference"``."""
        if self.verify == "paths":
            return "paths"
        return self.verify == "every" or reference

    def score(self, batch: Batch, n: int, self_reference: bool = False, keep_graph: bool = False) -> Chunk:
        """Scores of ``batch`` against the reference side, or (``self_reference``) against the batch itself from
        the same capture. ``keep_graph`` is not needed: the update is built from the recorded factors. (A cached
        verdict naming parameters not yet routed comes back from ``verified_capture`` as new failures, so it
        raises ``Reroute`` like a failure found now.)"""
        cap, blocks, new = verified_capture(self.model, self.loss_fn, batch, self.pl, n, "train", self.routed,
                                            check=self.capture_check(reference=self_reference))
        if new:
            raise Reroute(new)
        if self_reference:
            self.start(n, self.side.pairwise, False)
            self.side.add(blocks, n, cap.checked)
        named = {k: self.lr * v for k, v in self.side.by_name(self.side.score(blocks, n, cap.losses)).items()}
        return Chunk(named, cap.losses, blocks=blocks)


def ghost(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          mode: str = "auto", fallback: str | None = "auto", chunk_size: int | None = None,
          memory_budget: int | None = DEFAULT_BUDGET, preconditioner: Mapping[str, Tensor] | None = None,
          verify: str = "paths") -> InfluenceResult:
    """Ghost influence: lr * sum_l <a_i (x) b_i, mean_v a_v (x) b_v>, equal to Exact on what the registry covers.

    One forward/backward over the reference batch, then over the training batch in chunks of ``chunk_size``
    samples (default: all at once). Per block, ``mode`` picks the Gram form or the materialised form
    (see ``influence.scoring``). The capture verifies itself against autograd (``influence.verify``): the first
    capture of each input signature is sum-checked against autograd's weight gradients and probed per sample;
    after that, ``verify="paths"`` (default) checks every capture (reference and training) on autograd's graph,
    that every path from the loss to a factored parameter runs through one of its layer calls
    (``influence.paths``), and sum-checks numerically only the parameters it finds otherwise; ``"every"``
    sum-checks every capture numerically; ``"reference"`` only the reference captures, at the price of not
    seeing a weight used outside its module only for some training inputs (costs: ``python -m
    validation.bench.verify_cost``).
    Parameters that cannot be factored (no layer rule, used outside their module, a layer whose leading
    dimension is not the batch, ...) are scored by ``influence.exact``: ``fallback="auto"`` (default) warns once
    naming them, ``"exact"`` does the same silently, ``"error"`` raises the named error instead; they are listed
    in ``result.routed_to_exact``. When the training batch is captured in one chunk and nothing is routed,
    ``result.weighted_gradient(w)`` returns sum_i w_i grad l_i for every parameter from the recorded factors.
    ``preconditioner``: {parameter name: P}, scores lr * <P (.) grad l_i, grad L_ref> (Adam's update, see
    ``influence.optim``; the contracted form carries P exactly, so the Gram form is not used).
    """
    from .session import Session
    n_train = check_batch(train, "train")
    return Session(model, loss_fn, ref, estimator="ghost", lr=lr, pairwise=pairwise, mode=mode, fallback=fallback,
                   chunk_size=chunk_size, memory_budget=memory_budget, preconditioner=preconditioner,
                   n_train=n_train, verify=verify).score(train)
