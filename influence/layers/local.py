"""Per-sample gradients of a module's own parameters from its recorded input and output gradient.

For a module called as ``y = m(x)`` on a batch whose samples it keeps apart, the per-sample gradient of its
parameters p is the vector-Jacobian product of the module alone, G_i = (dy_i/dp)^T b_i with b_i = dl/dy_i the
recorded output gradient: one ``torch.func.vjp`` of the module's own ``forward``, vmapped over the samples.
It is exact for any forward (an affine normalisation, a parameter added or concatenated to the activations,
a scale), costs about one forward and backward of the module, and is materialised per sample ([n, numel(p)]),
so rules use it for small parameters (norm scales, class tokens, position parameters).

:class:`LocalRule` is the base of such rules: ``record`` accepts calls with one tensor argument (keyword
arguments only at their defaults, None or False), ``ghost_pieces`` returns one materialised piece for the
scored parameters, and there is no LAI term (``lai = False``). A float64 input is re-run in float64 throughout
(the registry's ``float64_mode``: ``influence.hf`` registers its ``KeepFloat64``), as ``influence.hf.prepare``
runs float64 models.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from ..factors import Dense, Segment
from .base import Context, GhostPiece, LayerRule, float64_mode, reshaper, unsupported


def direct_params(module: nn.Module, ctx: Context) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the module's own parameters that ``ctx`` scores."""
    return [(k, p) for k, p in module.named_parameters(recurse=False) if ctx.scored(p)]


def _precision(x: Tensor):
    if x.dtype != torch.float64:
        return contextlib.nullcontext()
    return float64_mode()


def module_vjp(module: nn.Module, params: list[tuple[str, nn.Parameter]], x: Tensor, grad_out: Tensor
               ) -> list[Tensor]:
    """[n, *p.shape] per parameter: (d m(x_i) / d p)^T grad_out_i for every sample i (x [n, ...] the recorded
    input, grad_out [n, ...] the output gradient). Calls the module's ``forward`` through ``functional_call``."""
    names = [k for k, _ in params]
    base = {k: p.detach() for k, p in params}

    def one(xi: Tensor, gi: Tensor) -> dict[str, Tensor]:
        _, pull = vjp(lambda ps: functional_call(module, ps, (xi.unsqueeze(0),), strict=False), base)
        return pull(gi.unsqueeze(0))[0]

    with torch.enable_grad(), _precision(x):
        got = vmap(one)(x.detach(), grad_out.detach())
    return [got[k].detach() for k in names]


class LocalRule(LayerRule):
    """A rule whose per-sample gradients come from :func:`module_vjp` (see the module docstring)."""

    lai = False
    #: the capture hands the rest of the model a copy of the output (a norm's output is often modified in place:
    #: ``hidden += residual``, ``ReLU(inplace=True)``), so the recorded output and its gradient stay exact
    protect_output = True

    def record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor:
        extra = list(args[1:]) + [v for v in kwargs.values() if v is not None and v is not False]
        if len(args) != 1 or not isinstance(args[0], Tensor) or extra:
            raise unsupported(type(module).__name__, "called with arguments besides one input tensor")
        return args[0]

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        params = direct_params(module, ctx)
        if not params:
            return []
        if any(id(p) in ctx.shared for _, p in params):
            raise unsupported(type(module).__name__, "its parameters are shared with other modules")
        n = inp.shape[0]
        grads = module_vjp(module, params, inp, grad_out)
        v = torch.cat([g.reshape(n, -1) for g in grads], -1).view(n, 1, 1, -1)
        ones = torch.ones(n, 1, 1, 1, dtype=v.dtype, device=v.device)
        sizes = [math.prod(p.shape) for _, p in params]
        owned = tuple(p for _, p in params)
        split = lambda m: list(m[0, :, 0].split(sizes))  # noqa: E731
        return [GhostPiece(owned, Segment(Dense(v), Dense(ones)), reshaper(owned, split))]
