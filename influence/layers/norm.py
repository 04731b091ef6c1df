"""Elementwise-affine normalisation (``nn.LayerNorm``, ``nn.RMSNorm``): y = xhat * w + b over the normalised shape.

dw = sum_t xhat_t * b_t, db = sum_t b_t per sample: vectors of the normalised size, materialised per sample
(one block [n, 1, 1, d] (x) 1). No LAI term (the gradient is not an outer product with b). The theory sees
tau = token positions and one group per normalised coordinate k (q = 1), x = [xhat_{tau,k}, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..factors import Dense, Segment
from .base import Context, GhostPiece, LayerRule, TheoryFactor, register_layer, reshaper, unsupported, with_bias

NORM_CLASSES = (nn.LayerNorm, nn.RMSNorm) if hasattr(nn, "RMSNorm") else (nn.LayerNorm,)


class AffineNormRule(LayerRule):
    """Base for normalisations with ``weight`` (and optional ``bias``) over ``normalized_shape``; a subclass
    implements :meth:`normalise` (xhat, same shape as x) and sets ``types``."""

    lai = False
    fold_tokens = True

    def normalized_shape(self, module: nn.Module) -> tuple[int, ...]:
        return tuple(module.normalized_shape)

    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _xhat(self, module: nn.Module, inp: Tensor) -> tuple[Tensor, int]:
        """xhat as [n, T, d] and d."""
        d = math.prod(self.normalized_shape(module))
        return self.normalise(module, inp).reshape(inp.shape[0], -1, d), d

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        params = tuple(p for p in (weight, bias) if ctx.scored(p))
        if not params:
            return []
        if any(id(p) in ctx.shared for p in params):
            raise unsupported(type(module).__name__, "normalisation parameters shared between modules")
        n = inp.shape[0]
        xhat, d = self._xhat(module, inp)
        b = grad_out.reshape(n, xhat.shape[1], d)
        vectors = []
        if ctx.scored(weight):
            vectors.append((xhat * b).sum(1))
        if ctx.scored(bias):
            vectors.append(b.sum(1))
        v = torch.cat(vectors, -1).view(n, 1, 1, -1)
        ones = torch.ones(n, 1, 1, 1, dtype=v.dtype, device=v.device)
        split = lambda m: list(m[0, :, 0].split(d))  # noqa: E731
        return [GhostPiece(params, Segment(Dense(v), Dense(ones)), reshaper(params, split))]

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        xhat, d = self._xhat(module, inp)
        x = with_bias(xhat.unsqueeze(-1), ctx.scored(getattr(module, "weight", None)),
                      ctx.scored(getattr(module, "bias", None)))  # [n, T, d, p]
        if x is None:
            return None
        n = inp.shape[0]
        return TheoryFactor(Dense(x), lambda j: j.reshape(n, j.shape[1], -1, d).transpose(2, 3).unsqueeze(-1),
                            "norm")


class LayerNormRule(AffineNormRule):
    name = "LayerNorm"
    types = (nn.LayerNorm,)

    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        dims = tuple(range(-len(module.normalized_shape), 0))
        return (x - x.mean(dims, keepdim=True)) * torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + module.eps)


class RMSNormRule(AffineNormRule):
    name = "RMSNorm"
    types = NORM_CLASSES[1:]

    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        dims = tuple(range(-len(module.normalized_shape), 0))
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)


register_layer(LayerNormRule())
if RMSNormRule.types:
    register_layer(RMSNormRule())
