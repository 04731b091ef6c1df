"""Per-layer factorisations of per-sample gradients (Ghost) and of the activation term (LAI).

For each supported layer, from its input a and output gradient b = dl/ds:

* ``nn.Linear``: dW = sum_t b_t (x) a_t, db = sum_t b_t  -> one block with a augmented by a 1 (the bias),
  so the pair term is sum_{t,t'} (a_t.a_t' + 1)(b_t.b_t').
* ``transformers``' ``Conv1D`` (GPT-2, GPT): a linear layer with weight stored (in, out), y = x @ W + b, so
  dW = sum_t a_t (x) b_t: the same factors with a on the left (augmented by the bias 1 there).
* ``nn.Conv1d``/``nn.Conv2d``: the same on the unfolded input, one group per conv group. Padding
  (numbers, ``'same'``, ``'valid'``, any ``padding_mode``), stride and dilation are applied by explicit padding
  followed by ``F.unfold``; Conv1d is Conv2d with a height-1 kernel.
* ``nn.Embedding``: dW = sum_t onehot(id_t) (x) b_t; ids equal to ``padding_idx`` add nothing, repeated ids add.
* ``nn.LayerNorm``/``nn.RMSNorm``: elementwise affine, dw = sum_t xhat_t * b_t, db = sum_t b_t; materialised
  per sample (they are vectors of the normalised size). These have no LAI term (no outer product with b).

LAI's activation for a layer is a (with the bias 1) for Linear and Conv1D, the ids for Embedding, and the
flattened input map (not the unfolded patches) for convolutions, so it does not depend on the kernel geometry.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import UnsupportedLayerError
from .factors import Block, Dense, Factor, Index, Segment


class HFConv1D(abc.ABC):
    """Matches ``transformers.pytorch_utils.Conv1D`` (and subclasses) in ``isinstance`` checks without importing
    transformers: a linear layer with ``weight`` [nx, nf] = (in, out), ``bias`` [nf], y = x @ W + b."""

    MODULE = "transformers.pytorch_utils"

    @classmethod
    def __subclasshook__(cls, klass: type) -> bool:
        if cls is not HFConv1D:
            return NotImplemented
        return any(k.__name__ == "Conv1D" and k.__module__ == cls.MODULE for k in klass.__mro__)


CONV_TYPES = (nn.Conv1d, nn.Conv2d)
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm) if hasattr(nn, "RMSNorm") else (nn.LayerNorm,)
SUPPORTED_TYPES = (nn.Linear, HFConv1D, nn.Embedding, *CONV_TYPES, *NORM_TYPES)
OUTER_TYPES = (nn.Linear, HFConv1D, nn.Embedding, *CONV_TYPES)


def trainable(p: nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


def check_supported(name: str, module: nn.Module) -> None:
    """Raise ``UnsupportedLayerError`` for options of a supported type that have no exact factorisation."""
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            raise UnsupportedLayerError(f"{name}: nn.Embedding with max_norm renormalises its weight in place "
                                        "during the forward pass; use max_norm=None or fallback='exact'")
        if module.scale_grad_by_freq:
            raise UnsupportedLayerError(f"{name}: nn.Embedding with scale_grad_by_freq scales gradients by batch "
                                        "frequencies, so per-sample gradients are undefined")
    if isinstance(module, CONV_TYPES) and module.transposed:
        raise UnsupportedLayerError(f"{name}: transposed convolutions are not supported; use fallback='exact'")


def _tokens(x: Tensor, width: int) -> Tensor:
    """[n, ..., width] -> [n, T, 1, width]."""
    return x.reshape(x.shape[0], -1, 1, width)


def _ones(like: Tensor) -> Tensor:
    return torch.ones(*like.shape[:-1], 1, dtype=like.dtype, device=like.device)


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


@dataclass
class GhostPiece:
    """A block contribution of one call of one module, keyed by the parameters it covers."""

    params: tuple[nn.Parameter, ...]
    segment: Segment
    unpack: Callable[[Tensor], list[Tensor]]


def _reshaper(params: tuple[nn.Parameter, ...], split: Callable[[Tensor], list[Tensor]]):
    def unpack(m: Tensor) -> list[Tensor]:
        return [t.reshape(p.shape) for t, p in zip(split(m), params)]
    return unpack


def _weight_bias_pieces(weight: nn.Parameter, bias: nn.Parameter | None, left: Dense, right: Dense,
                        shared: set[int], bias_side: str = "right") -> list[GhostPiece]:
    """Pieces for dW = sum L (x) R and db = sum (the factor on the other side from ``bias_side``), merged into
    one block augmented by a 1 on ``bias_side`` unless either parameter is shared. ``bias_side="right"``:
    the bias is an extra column of W (nn.Linear, conv); ``"left"``: an extra row (Conv1D, W stored (in, out))."""
    w_on, b_on = trainable(weight), trainable(bias)
    on_right = bias_side == "right"
    ones = Dense(_ones(right.x if on_right else left.x))
    pieces = []
    if w_on and b_on and id(weight) not in shared and id(bias) not in shared:
        if on_right:
            seg = Segment(left, Dense(torch.cat([right.x, ones.x], -1)))
            split = lambda m: [m[..., :-1], m[..., -1]]  # noqa: E731
        else:
            seg = Segment(Dense(torch.cat([left.x, ones.x], -1)), right)
            split = lambda m: [m[..., :-1, :], m[..., -1, :]]  # noqa: E731
        pieces.append(GhostPiece((weight, bias), seg, _reshaper((weight, bias), split)))
        return pieces
    if w_on:
        pieces.append(GhostPiece((weight,), Segment(left, right), _reshaper((weight,), lambda m: [m])))
    if b_on:
        seg, split = (Segment(left, ones), lambda m: [m[..., 0]]) if on_right else \
            (Segment(ones, right), lambda m: [m[..., 0, :]])
        pieces.append(GhostPiece((bias,), seg, _reshaper((bias,), split)))
    return pieces


def ghost_pieces(module: nn.Module, inp: Tensor, grad_out: Tensor, shared: set[int]) -> list[GhostPiece]:
    """Exact factorisation of one call's per-sample parameter gradients."""
    n = grad_out.shape[0]
    if isinstance(module, nn.Linear):
        a = _tokens(inp, module.in_features)
        b = _tokens(grad_out, module.out_features)
        return _weight_bias_pieces(module.weight, module.bias, Dense(b), Dense(a), shared)
    if isinstance(module, HFConv1D):
        a = _tokens(inp, module.weight.shape[0])
        b = _tokens(grad_out, module.weight.shape[1])
        return _weight_bias_pieces(module.weight, module.bias, Dense(a), Dense(b), shared, bias_side="left")
    if isinstance(module, CONV_TYPES):
        g = module.groups
        patches = unfold_conv_input(module, inp)  # [n, P, C_in*K]
        p = patches.shape[1]
        right = patches.reshape(n, p, g, -1)
        left = grad_out.reshape(n, g, module.out_channels // g, p).permute(0, 3, 1, 2)
        return _weight_bias_pieces(module.weight, module.bias, Dense(left), Dense(right), shared)
    if isinstance(module, nn.Embedding):
        ids = inp.reshape(n, -1)
        if module.padding_idx is not None:
            ids = torch.where(ids == module.padding_idx, torch.full_like(ids, -1), ids)
        right = _tokens(grad_out, module.embedding_dim)
        w = module.weight
        return [GhostPiece((w,), Segment(Index(ids, module.num_embeddings), Dense(right)),
                           _reshaper((w,), lambda m: [m]))]
    if isinstance(module, NORM_TYPES):
        return _norm_pieces(module, inp, grad_out, shared)
    raise UnsupportedLayerError(f"no factorisation for {type(module).__name__}")


def _norm_pieces(module: nn.Module, inp: Tensor, grad_out: Tensor, shared: set[int]) -> list[GhostPiece]:
    n = inp.shape[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    x = inp
    if isinstance(module, nn.LayerNorm):
        xhat = (x - x.mean(dims, keepdim=True)) * torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + module.eps)
    else:
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        xhat = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    d = math.prod(module.normalized_shape)
    size = xhat[0].numel() // d
    xhat = xhat.reshape(n, size, d)
    b = grad_out.reshape(n, size, d)
    vectors, params = [], []
    if trainable(module.weight):
        vectors.append((xhat * b).sum(1))
        params.append(module.weight)
    if trainable(getattr(module, "bias", None)):
        vectors.append(b.sum(1))
        params.append(module.bias)
    if any(id(p) in shared for p in params):
        raise UnsupportedLayerError("normalisation parameters shared between modules are not supported")
    v = torch.cat(vectors, -1).view(n, 1, 1, -1)
    ones = torch.ones(n, 1, 1, 1, dtype=v.dtype, device=v.device)
    split = lambda m: list(m[0, :, 0].split(d))  # noqa: E731
    return [GhostPiece(tuple(params), Segment(Dense(v), Dense(ones)), _reshaper(tuple(params), split))]


def lai_activation(module: nn.Module, inp: Tensor) -> Factor | None:
    """LAI's activation factor for one call: Dense [n, T, 1, p] or Index [n, T]; None for norm layers."""
    n = inp.shape[0]
    if isinstance(module, nn.Linear):
        a = _tokens(inp, module.in_features)
    elif isinstance(module, HFConv1D):
        a = _tokens(inp, module.weight.shape[0])
    elif isinstance(module, CONV_TYPES):
        a = inp.reshape(n, 1, 1, -1)
    elif isinstance(module, nn.Embedding):
        ids = inp.reshape(n, -1)
        if module.padding_idx is not None:
            ids = torch.where(ids == module.padding_idx, torch.full_like(ids, -1), ids)
        return Index(ids, module.num_embeddings)
    else:
        return None
    parts = [a] if trainable(module.weight) else []
    if trainable(module.bias):
        parts.append(_ones(a))
    return Dense(torch.cat(parts, -1))


def owner_names(model: nn.Module) -> dict[int, str]:
    """Parameter id -> name of the module that owns it in ``model.named_parameters()`` (first occurrence)."""
    owners = {}
    for pname, p in model.named_parameters():
        owners.setdefault(id(p), pname.rpartition(".")[0])
    return owners


def make_block(key_params: tuple[nn.Parameter, ...], pieces: list[GhostPiece], owners: dict[int, str]) -> Block:
    return Block(owners[id(key_params[0])], [pc.segment for pc in pieces], list(key_params), pieces[0].unpack)
