"""``nn.Conv1d`` / ``nn.Conv2d``: the linear-layer factorisation on the input patches, one group per conv group.

Padding (numbers, ``'same'``, ``'valid'``, any ``padding_mode``) is kept implicit where it is symmetric zeros and
applied explicitly otherwise; the patches are kept lazily as ``influence.factors.Patches`` (the input map with
padding, stride, dilation and kernel), whose reference matrix and contraction are convolution kernels, so Ghost's
contracted form never unfolds them; a bias joins its weight as the Patches' ``ones`` column (not stored). Conv1d is Conv2d with a height-1 kernel. LAI's activation
is the flattened input map with a bias 1 (not the patches), so it does not depend on the kernel geometry.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..factors import Dense, Patches, ones_factor
from .base import Context, GhostPiece, LayerRule, TheoryFactor, register_layer, unsupported, weight_bias_pieces


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


def conv_patches(module: nn.Module, x: Tensor) -> Patches:
    """The patches of a Conv1d/Conv2d input [n, C_in, *spatial] as a lazy factor [n, P, G, C_in / G * K]: the
    input map (a view of ``x``) with the kernel geometry and symmetric zero padding left implicit; other
    paddings (reflect, circular, the uneven sides of some ``'same'``) are applied by an explicit ``F.pad``."""
    spatial = x.dim() - 2
    pads = conv_pads(module, spatial)  # last dim first
    implicit = (0, 0)
    if module.padding_mode == "zeros" and all(pads[i] == pads[i + 1] for i in range(0, len(pads), 2)):
        implicit = (0, pads[0]) if spatial == 1 else (pads[2], pads[0])
    elif any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    k, s, d = module.kernel_size, module.stride, module.dilation
    if spatial == 1:
        x, k, s, d = x.unsqueeze(2), (1, k[0]), (1, s[0]), (1, d[0])
    return Patches(x, tuple(k), tuple(s), tuple(d), module.groups, padding=implicit)


def unfold_conv_input(module: nn.Module, x: Tensor) -> Tensor:
    """Materialised patches of a Conv1d/Conv2d input: [n, C_in, *spatial] -> [n, P, C_in * prod(kernel)]."""
    patches = conv_patches(module, x).x
    return patches.reshape(*patches.shape[:2], -1)


class ConvRule(LayerRule):
    name = "Conv"
    types = (nn.Conv1d, nn.Conv2d)
    shareable = True

    def check(self, name: str, module: nn.Module) -> None:
        if module.transposed:
            raise unsupported(name, "transposed convolutions are not supported; their parameters go to Exact")

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        n, g = inp.shape[0], module.groups
        right = conv_patches(module, inp)
        left = grad_out.reshape(n, g, module.out_channels // g, right.tokens).permute(0, 3, 1, 2)  # a view
        return weight_bias_pieces(module.weight, module.bias, Dense(left), right, ctx)

    def lai_activation(self, module: nn.Module, inp: Tensor, ctx: Context) -> Dense | None:
        w_on, b_on = ctx.scored(module.weight), ctx.scored(module.bias)
        if w_on:  # the flattened map (a view of a contiguous input) with the bias as an unstored ones column
            return Dense(inp.reshape(inp.shape[0], 1, 1, -1), ones=b_on)
        return Dense(inp.new_ones(inp.shape[0], 1, 1, 1)) if b_on else None

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        w_on, b_on = ctx.scored(module.weight), ctx.scored(module.bias)
        if not (w_on or b_on):
            return None
        n, groups = inp.shape[0], module.groups
        patches = conv_patches(module, inp)
        x = (patches.with_ones() if b_on else patches).x if w_on else ones_factor(patches).x
        p, q = x.shape[1], module.out_channels // groups
        return TheoryFactor(Dense(x), lambda j: j.reshape(n, j.shape[1], groups, q, p).transpose(3, 4), "flat")


register_layer(ConvRule())
