"""``nn.Conv1d`` / ``nn.Conv2d``: the linear-layer factorisation on the unfolded input, one group per conv group.

Padding (numbers, ``'same'``, ``'valid'``, any ``padding_mode``), stride and dilation are applied by explicit
padding followed by ``F.unfold``; Conv1d is Conv2d with a height-1 kernel. LAI's activation is the flattened
input map with a bias 1 (not the unfolded patches), so it does not depend on the kernel geometry.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..factors import Dense
from .base import (Context, GhostPiece, LayerRule, TheoryFactor, register_layer, unsupported, weight_bias_pieces,
                   with_bias)


def conv_pads(module: nn.Module, spatial: int) -> list[int]:
    """Explicit (left, right) pads per spatial dim, in F.pad order (last dim first)."""
    k, d = module.kernel_size, module.dilation
    pads: list[int] = []
    for i in reversed(range(spatial)):
        if module.padding == "same":
            total = d[i] * (k[i] - 1)
            pads += [total // 2, total - total // 2]
        elif module.padding == "valid":
            pads += [0, 0]
        else:
            pads += [module.padding[i], module.padding[i]]
    return pads


def unfold_conv_input(module: nn.Module, x: Tensor) -> Tensor:
    """Patches of a Conv1d/Conv2d input: [n, C_in, *spatial] -> [n, P, C_in * prod(kernel)]."""
    spatial = x.dim() - 2
    pads = conv_pads(module, spatial)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    k, s, d = module.kernel_size, module.stride, module.dilation
    if spatial == 1:
        x, k, s, d = x.unsqueeze(2), (1, k[0]), (1, s[0]), (1, d[0])
    return F.unfold(x, k, dilation=d, stride=s).transpose(1, 2)


class ConvRule(LayerRule):
    name = "Conv"
    types = (nn.Conv1d, nn.Conv2d)
    shareable = True

    def check(self, name: str, module: nn.Module) -> None:
        if module.transposed:
            raise unsupported(name, "transposed convolutions are not supported; their parameters go to Exact")

    def _patches(self, module: nn.Module, inp: Tensor) -> Tensor:
        """[n, P, G, C_in / G * K]."""
        patches = unfold_conv_input(module, inp)
        return patches.reshape(inp.shape[0], patches.shape[1], module.groups, -1)

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        n, g = inp.shape[0], module.groups
        right = self._patches(module, inp)
        p = right.shape[1]
        left = grad_out.reshape(n, g, module.out_channels // g, p).permute(0, 3, 1, 2)
        return weight_bias_pieces(module.weight, module.bias, Dense(left), Dense(right), ctx)

    def lai_activation(self, module: nn.Module, inp: Tensor, ctx: Context) -> Dense | None:
        x = with_bias(inp.reshape(inp.shape[0], 1, 1, -1), ctx.scored(module.weight), ctx.scored(module.bias))
        return None if x is None else Dense(x)

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        n, groups = inp.shape[0], module.groups
        x = with_bias(self._patches(module, inp), ctx.scored(module.weight), ctx.scored(module.bias))
        if x is None:
            return None
        p, q = x.shape[1], module.out_channels // groups
        return TheoryFactor(Dense(x), lambda j: j.reshape(n, j.shape[1], groups, q, p).transpose(3, 4), "flat")


register_layer(ConvRule())
