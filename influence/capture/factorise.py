"""Factorisation of a capture: every scored parameter's per-sample gradient as a block of outer products
(``factor_blocks``, merged across calls and across modules sharing a parameter), and autograd's gradients as dense
tensors (``dense_grad``)."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..errors import UnsupportedLayerError
from ..factors import Block
from ..layers import Context, GhostPiece, make_block
from .calls import Capture
from .planning import Plan


def dense_grad(p: Tensor, g: Tensor | None) -> Tensor:
    """Autograd's gradient of ``p`` as a dense tensor: zeros where unused, densified where sparse
    (``nn.Embedding(sparse=True)``: the layout changes, not the gradient)."""
    if g is None:
        return torch.zeros_like(p)
    return g.to_dense() if g.layout != torch.strided else g


def factor_blocks(cap: Capture, pl: Plan, ctx: Context) -> tuple[dict[tuple[int, ...], Block], dict[int, str]]:
    """Exact per-sample gradient factorisation of every parameter ``ctx.scored``, merged across calls and across
    modules that share a parameter. Returns (blocks keyed by parameter ids, {param id: why it could not be
    factored}) - a module whose calls could not be recorded or factored lists all its scored parameters."""
    pieces: dict[tuple[int, ...], list[GhostPiece]] = defaultdict(list)
    params: dict[tuple[int, ...], tuple] = {}
    failed: dict[int, str] = {}
    for name, module in pl.modules.items():
        if name in cap.bad:
            failed.update({id(p): f"{name}: {cap.bad[name]}" for p in module.parameters(recurse=False)
                           if ctx.scored(p)})
    for name in cap.order:
        if name in cap.bad:
            continue
        module, rule = pl.modules[name], pl.rules[name]
        got: list[GhostPiece] = []
        try:
            for call, grad in zip(cap.calls[name], cap.grads[name]):
                got += rule.ghost_pieces(module, call.inp, grad, ctx)
        except (UnsupportedLayerError, RuntimeError, ValueError, IndexError) as e:
            failed.update({id(p): f"{name}: {rule.name} could not factor the call ({type(e).__name__}: {e})"
                           for p in module.parameters(recurse=False) if ctx.scored(p)})
            continue
        if any(id(p) not in pl.names for pc in got for p in pc.params):  # e.g. a weight computed by a parametrization
            failed.update({id(p): f"{name}: its {rule.name} factors a tensor that is not a parameter of the model "
                                  "(a parametrization such as weight_norm computes it)"
                           for p in module.parameters(recurse=False) if ctx.scored(p)})
            continue
        for pc in got:
            key = tuple(id(p) for p in pc.params)
            pieces[key].append(pc)
            params[key] = pc.params
    blocks = {}
    for key, pcs in pieces.items():
        if any(k in failed for k in key):
            failed.update({k: failed.get(k) or f"{pl.owners[k]}: shares a parameter with a module that could not "
                                               "be factored" for k in key})
            continue
        dims = {(s.left.dim, s.right.dim, s.left.groups) for s in (pc.segment for pc in pcs)}
        if len(dims) > 1:
            failed.update({k: f"{pl.owners[k]}: modules sharing this parameter use it with different orientations "
                              f"{sorted(dims)}" for k in key})
            continue
        blocks[key] = make_block(params[key], pcs, pl.owners)
    return blocks, failed
