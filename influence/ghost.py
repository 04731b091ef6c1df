"""Ghost influence: exact per-layer inner products from one forward and one truncated backward pass."""

from __future__ import annotations

import warnings
from typing import Hashable

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, take
from .checks import check_arguments
from .capture import Plan, plan, raise_routed
from .errors import RoutedToExactWarning
from .exact import exact
from .factors import Block
from .result import InfluenceResult
from .scoring import DEFAULT_BUDGET, ReferenceSide
from .verify import Routed, known_failures, verified_capture


def _concat_chunks(chunks: list[dict[Hashable, Tensor]]) -> dict[Hashable, Tensor]:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def _weighted_gradient(blocks: dict[Hashable, Block]):
    def weighted_gradient(weights: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        """sum_i w_i grad l_i for every captured parameter, from the recorded factors (no second backward)."""
        out = []
        for block in blocks.values():
            out += list(zip(block.params, block.unpack(block.matrix(weights))))
        return out
    return weighted_gradient


def finish(estimator: str, lr: float, side: ReferenceSide, chunks: list[dict[Hashable, Tensor]], pairwise: bool,
           losses: Tensor, extra: InfluenceResult | None = None) -> InfluenceResult:
    """Assemble per-layer results (scaled by lr) from scored chunks, adding an exact fallback's layers (summed
    into a layer that also has factored parameters)."""
    named = {k: lr * v for k, v in side.by_name(_concat_chunks(chunks)).items()} if chunks and chunks[0] else {}
    if extra is not None:
        for k, v in (extra.per_layer_pairwise if pairwise else extra.per_layer).items():
            named[k] = named[k] + v if k in named else v
    if not named:
        n = losses.shape[0]
        zero = losses.new_zeros((n, side.n_ref) if pairwise else (n,))
        return InfluenceResult(estimator, lr, zero.mean(1) if pairwise else zero, {}, zero if pairwise else None,
                               {} if pairwise else None, losses)
    if pairwise:
        total = sum(named.values())
        return InfluenceResult(estimator, lr, total.mean(1), {k: v.mean(1) for k, v in named.items()}, total,
                               named, losses)
    return InfluenceResult(estimator, lr, sum(named.values()), named, train_losses=losses)


def report_routed(pl: Plan, routed: Routed, estimator: str, action: str) -> list[str]:
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
                      RoutedToExactWarning, stacklevel=3)
    return names


def _chunk_batches(train: Batch, n_t: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(chunk, n_t - i)) for i in range(0, n_t, chunk)]


def _known(model: nn.Module, batches: list[Batch], pl: Plan) -> Routed:
    out: Routed = {}
    for b in batches:
        out.update(known_failures(model, b, pl) or {})
    return out


class _Reroute(Exception):
    """A capture found parameters that cannot be factored: start again with them routed."""


def ghost(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, pairwise: bool = False,
          mode: str = "auto", fallback: str | None = "auto", chunk_size: int | None = None,
          memory_budget: int = DEFAULT_BUDGET) -> InfluenceResult:
    """Ghost influence: lr * sum_l <a_i (x) b_i, mean_v a_v (x) b_v>, equal to Exact on what the registry covers.

    One forward/backward over the reference batch, then over the training batch in chunks of ``chunk_size``
    samples (default: all at once). Per block, ``mode`` picks the Gram form or the materialised form
    (see ``influence.scoring``). The capture verifies itself against autograd (``influence.verify``): the
    reference capture on every call, every capture of a new input signature in full (with a per-sample probe).
    Parameters that cannot be factored (no layer rule, used outside their module, a layer whose leading
    dimension is not the batch, ...) are scored by ``influence.exact``: ``fallback="auto"`` (default) warns once
    naming them, ``"exact"`` does the same silently, ``"error"`` raises the named error instead; they are listed
    in ``result.routed_to_exact``. When the training batch is captured in one chunk and nothing is routed,
    ``result.weighted_gradient(w)`` returns sum_i w_i grad l_i for every parameter from the recorded factors.
    """
    n_t, n_v, lr = check_arguments(model, train, ref, lr, chunk_size)
    pl = plan(model, fallback)
    if pl.fallback == "error":
        raise_routed(pl, pl.routed)
    chunk = chunk_size or n_t
    spans = _chunk_batches(train, n_t, chunk)
    routed: Routed = dict(pl.routed)
    sig_batches = [ref] + [take(train, slice(i, i + c)) for i, c in {c: (i, c) for i, c in spans}.values()]
    routed.update(_known(model, sig_batches, pl))
    for _ in range(len(pl.names) + 2):
        try:
            result = _ghost_pass(model, loss_fn, train, ref, lr, pl, routed, spans, n_v, pairwise, mode,
                                 memory_budget)
            break
        except _Reroute as e:
            routed.update(e.args[0])
    names = report_routed(pl, routed, "ghost", "not factorable, scored by Exact")
    if names:
        extra = exact(model, loss_fn, train, ref, lr, pairwise=pairwise, params=names)
        side, chunks, losses, _ = result
        result = finish("ghost", lr, side, chunks, pairwise, losses, extra)
    else:
        side, chunks, losses, blocks = result
        result = finish("ghost", lr, side, chunks, pairwise, losses)
        if len(chunks) == 1:
            result.weighted_gradient = _weighted_gradient(blocks)
    result.routed_to_exact = names
    return result


def _ghost_pass(model, loss_fn, train, ref, lr, pl, routed, spans, n_v, pairwise, mode, memory_budget):
    _, ref_blocks, new = verified_capture(model, loss_fn, ref, pl, n_v, "ref", routed)
    if new:
        raise _Reroute(new)
    side = ReferenceSide(ref_blocks, sum(c for _, c in spans), pairwise, mode, memory_budget)
    del ref_blocks
    chunks, losses, blocks = [], [], {}
    for i, c in spans:
        cap, blocks, new = verified_capture(model, loss_fn, take(train, slice(i, i + c)), pl, c, "train", routed,
                                            check=False)
        if new:
            raise _Reroute(new)
        chunks.append(side.score(blocks, c, cap.losses))
        losses.append(cap.losses)
    return side, chunks, torch.cat(losses), blocks
