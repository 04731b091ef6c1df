"""A convolution's input patches as a lazy factor, and the convolution kernels that contract it.

``Patches`` stands for the unfolded input of a Conv1d/Conv2d ([n, T, G, C_in / G * kh * kw], ``F.unfold`` order)
but keeps only the input map and the kernel geometry; ``influence.factors`` reads it through the functions here:
its reference matrix is the convolution's weight gradient (``conv_matrix``), its contraction with a matrix one
convolution (``conv_contract``), its projection on a few directions one convolution (``conv_rows_times``). The
patches are only unfolded (``.x``) where a Gram or per-sample product needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import InvalidArgumentError


@dataclass
class Patches:
    """Patches of a convolution's input as a factor [n, T = H_out * W_out, G, C_in / G * kh * kw (+1 with
    ``ones``)], kept as the input map ``inp`` [n, C_in, H, W] (a Conv1d is a Conv2d with H = 1 and kh = 1) with
    ``padding`` (ph, pw) zeros on both sides of each spatial axis left implicit (other paddings are applied to
    ``inp`` explicitly): ``F.unfold`` order, so the last axis matches the flattened weight [C_out, C_in / G, kh, kw].
    """

    inp: Tensor
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    n_groups: int
    ones: bool = False
    padding: tuple[int, int] = (0, 0)

    @property
    def out_size(self) -> tuple[int, int]:
        h, w = self.inp.shape[2:]
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, p, k, s, d in zip((h, w), self.padding, self.kernel, self.stride, self.dilation))

    @property
    def x(self) -> Tensor:
        n = self.inp.shape[0]
        cols = F.unfold(self.inp, self.kernel, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)  # [n, C*K, P]
        x = cols.transpose(1, 2).reshape(n, cols.shape[2], self.n_groups, -1)
        return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1) if self.ones else x

    @property
    def dtype(self) -> torch.dtype:
        return self.inp.dtype

    @property
    def n(self) -> int:
        return self.inp.shape[0]

    @property
    def tokens(self) -> int:
        h, w = self.out_size
        return h * w

    @property
    def groups(self) -> int:
        return self.n_groups

    @property
    def dim(self) -> int:
        return self.inp.shape[1] // self.n_groups * self.kernel[0] * self.kernel[1] + int(self.ones)

    def rows(self, index: slice) -> "Patches":
        return Patches(self.inp[index], self.kernel, self.stride, self.dilation, self.n_groups, self.ones,
                       self.padding)

    def with_ones(self) -> "Patches":
        if self.ones:
            raise InvalidArgumentError("factor already carries a ones column")
        return Patches(self.inp, self.kernel, self.stride, self.dilation, self.n_groups, True, self.padding)


def conv_grad_map(left: Tensor, patches: Patches) -> Tensor:
    """A convolution's left factor (its output gradient) [n, T, G, p] as the map [n, G*p, H_out, W_out]."""
    n, _, g, p = left.shape
    return left.permute(0, 2, 3, 1).reshape(n, g * p, *patches.out_size)


def conv_matrix(left: Tensor, patches: Patches, weights: Tensor | None) -> Tensor:
    """sum_i w_i sum_t b_{i,t} (x) patch_{i,t} [G, p, q]: the convolution's weight (and bias) gradient of the
    output-gradient map, computed by the convolution backward kernel instead of unfolding."""
    grad = conv_grad_map(left, patches)
    if weights is not None:
        grad = grad * weights.view(-1, 1, 1, 1).to(grad.dtype)
    g, c_out, c_in = patches.n_groups, grad.shape[1], patches.inp.shape[1]
    w = torch.nn.grad.conv2d_weight(patches.inp, (c_out, c_in // g, *patches.kernel), grad, stride=patches.stride,
                                    padding=patches.padding, dilation=patches.dilation, groups=g)
    m = w.reshape(g, c_out // g, -1)
    if patches.ones:
        m = torch.cat([m, grad.sum((0, 2, 3)).view(g, c_out // g, 1)], -1)
    return m


def conv_contract(left: Tensor, m: Tensor, patches: Patches) -> Tensor:
    """[n]: sum_t b_{i,t}^T M patch_{i,t} as one convolution of the input with M (and M's bias column as the
    bias), multiplied by the output-gradient map and summed per sample."""
    grad = conv_grad_map(left, patches)
    g, p, q = m.shape
    q0 = q - int(patches.ones)
    weight = m[..., :q0].reshape(g * p, patches.inp.shape[1] // g, *patches.kernel)
    bias = m[..., q0].reshape(g * p) if patches.ones else None
    y = F.conv2d(patches.inp, weight, bias, stride=patches.stride, padding=patches.padding,
                 dilation=patches.dilation, groups=g)
    return y.mul_(grad).sum((1, 2, 3))


# up to this many conv groups, ``conv_rows_times`` convolves with a block-diagonal dense weight: oneDNN's grouped
# kernels are several times slower with the 1-4 output channels per group of a projection (measured on CPU)
_BLOCK_DIAGONAL_GROUPS = 8


def conv_rows_times(f: Patches, w: Tensor) -> Tensor:
    """The patches [n, T, G, d] times per-group matrices ``w`` [G, d, k]: [G, n*T, k] as one convolution of the
    input with ``w`` (its last row as the bias when the factor carries ones), without unfolding."""
    n, c = f.inp.shape[:2]
    g, d, k = w.shape
    d0 = d - int(f.ones)
    weight = w[:, :d0].transpose(1, 2).to(f.dtype)  # [G, k, C_in / G * K]
    bias = w[:, d0].reshape(g * k).to(f.dtype) if f.ones else None
    conv_groups = g
    if 1 < g <= _BLOCK_DIAGONAL_GROUPS:  # few outputs per group: one dense conv with a block-diagonal weight
        full = weight.new_zeros(g, k, g, d0)
        idx = torch.arange(g, device=weight.device)
        full[idx, :, idx] = weight
        weight, conv_groups = full, 1
    weight = weight.reshape(g * k, c // conv_groups, *f.kernel)
    y = F.conv2d(f.inp, weight, bias, stride=f.stride, padding=f.padding, dilation=f.dilation,
                 groups=conv_groups)  # [n, G*k, H_out, W_out]
    return y.reshape(n, g, k, -1).permute(1, 0, 3, 2).reshape(g, -1, k)
