"""``nn.Linear`` and ``transformers``' ``Conv1D`` (GPT-2, GPT): y = a W^T + b, resp. y = a W + b.

Per call, with a = the input tokens [n, T, in] and b = the output gradient [n, T, out]:
dW = sum_t b_t (x) a_t (Conv1D: a_t (x) b_t, W stored (in, out)), db = sum_t b_t -> one block with a
augmented by a 1 (the bias), so the pair term is sum_{t,t'} (a_t.a_t' + 1)(b_t.b_t'). LAI's activation is
[a, 1]; the theory's left factor is the same. A flattened [n*T, in] input is read as n samples of T tokens.
"""

from __future__ import annotations

import abc

from torch import Tensor, nn

from ..factors import Dense
from .base import (
    Context,
    GhostPiece,
    LayerRule,
    TheoryFactor,
    register_layer,
    tokens,
    weight_bias_pieces,
    with_bias,
    with_bias_factor,
)


class HFConv1D(abc.ABC):
    """Matches ``transformers.pytorch_utils.Conv1D`` (and subclasses) in ``isinstance`` checks without importing
    transformers: a linear layer with ``weight`` [nx, nf] = (in, out), ``bias`` [nf], y = x @ W + b."""

    MODULE = "transformers.pytorch_utils"

    @classmethod
    def base(cls, klass: type) -> type | None:
        """The ``Conv1D`` class in ``klass``'s MRO, or None."""
        return next((k for k in klass.__mro__ if k.__name__ == "Conv1D" and k.__module__ == cls.MODULE), None)

    @classmethod
    def __subclasshook__(cls, klass: type) -> bool:
        if cls is not HFConv1D:
            return NotImplemented
        return cls.base(klass) is not None


class _Dense(LayerRule):
    """Shared code of the two linear layouts: ``widths`` gives (in, out), ``bias_side`` where the bias joins."""

    lai = True
    shareable = True
    fold_tokens = True
    bias_side = "right"

    def widths(self, module: nn.Module) -> tuple[int, int]:
        raise NotImplementedError

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        d_in, d_out = self.widths(module)
        a, b = Dense(tokens(inp, d_in)), Dense(tokens(grad_out, d_out))
        left, right = (b, a) if self.bias_side == "right" else (a, b)
        return weight_bias_pieces(module.weight, module.bias, left, right, ctx, self.bias_side)

    def lai_activation(self, module: nn.Module, inp: Tensor, ctx: Context) -> Dense | None:
        """[a, 1] as a view of the recorded input with an unstored ones column (no copy)."""
        return with_bias_factor(tokens(inp, self.widths(module)[0]), ctx.scored(module.weight),
                                ctx.scored(module.bias))

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        n = inp.shape[0]
        d_in, d_out = self.widths(module)
        x = with_bias(tokens(inp, d_in), ctx.scored(module.weight), ctx.scored(module.bias))
        if x is None:
            return None
        t = x.shape[1]
        return TheoryFactor(Dense(x), lambda j: j.reshape(n, j.shape[1], 1, t, d_out), "token")


class LinearRule(_Dense):
    name = "Linear"
    types = (nn.Linear,)

    def widths(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features


class HFConv1DRule(_Dense):
    name = "Conv1D (transformers)"
    types = (HFConv1D,)
    bias_side = "left"

    def matches(self, module: nn.Module) -> bool:
        base = HFConv1D.base(type(module))
        return base is not None and type(module).forward is base.forward

    def widths(self, module: nn.Module) -> tuple[int, int]:
        return module.weight.shape[0], module.weight.shape[1]


register_layer(LinearRule())
register_layer(HFConv1DRule())
