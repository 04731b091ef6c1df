"""``nn.MultiheadAttention``: its in-projection (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``),
``bias_k``/``bias_v`` and ``out_proj`` (called inside ``F.multi_head_attention_forward``, never as a module).

Per call, with x^q [n, L, E], x^k [n, S, kdim], x^v [n, S, vdim] the query/key/value inputs (batch first in
either layout), q/k/v = the projections, o [n, L, E] the heads' output before ``out_proj`` and b = dl/d(output)
[n, L, E] (the recorded output gradient): dW_o = sum_t b_t (x) o_t, db_o = sum_t b_t, and
dW_q = sum_t dq_t (x) x^q_t (k, v alike over S tokens), db_in = sum_t [dq_t; dk_t; dv_t]. ``ghost_pieces``
recomputes o from the recorded inputs (the projections, then ``F.scaled_dot_product_attention`` with the additive
mask the module used) and dq, dk, dv by one local backward of that core from b W_o: about one attention forward
and backward per call, no per-sample loop (samples do not interact in the core). The
packed ``in_proj_weight`` [3E, E] is one block of 3 groups (q, k, v), tokens padded to max(L, S) with zeros.
``bias_k``/``bias_v`` (``add_bias_kv``: one extra key/value token) get the gradient at that token;
``add_zero_attn`` adds a zero token. Masks: ``key_padding_mask``, ``attn_mask`` (2-D or 3-D, bool or float) and
``is_causal`` are turned into the additive mask torch applies. The capture verifies the pieces against autograd
on the module's real forward (sum check, per-sample probe), so a mismatch routes the parameters to Exact.

LAI's activation (tokens padded to max(L, S)): [x^q, 1 | x^k, 1 | x^v, 1 | o, 1] (the parts whose parameters
are scored), the sum of the four linear maps' terms. The layer is never LAI's output layer (its in-projection
acts before the attention). Not supported (parameters go to Exact): unbatched (2-D) or nested inputs. Dropout
in train mode is refused as for ``nn.Dropout`` (``influence.capture.check_stochastic``).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..factors import Dense, Segment, ones_factor
from .base import (
    Context,
    GhostPiece,
    LayerRule,
    register_capture_context,
    register_layer,
    reshaper,
    tokens,
    unsupported,
    weight_bias_pieces,
    with_bias,
)

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


@register_capture_context
@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """torch's fused attention paths off (``torch.backends.mha``) while a capture runs: without autograd, eval-mode
    ``nn.TransformerEncoder`` turns padded batches into nested tensors and fused layers skip their submodules,
    which per-layer hooks cannot read."""
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = not attended) as an additive float mask (-inf), a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise unsupported("MultiheadAttention", f"a mask of dtype {mask.dtype}")
    return mask.to(dtype)


def _extra_keys(module: nn.MultiheadAttention) -> int:
    return int(module.bias_k is not None) + int(module.add_zero_attn)


def attention_mask(module: nn.MultiheadAttention, n: int, length: int, source: int, key_padding_mask: Tensor | None,
                   attn_mask: Tensor | None, is_causal: bool, need_weights: bool, dtype: torch.dtype
                   ) -> Tensor | None:
    """The additive mask ``F.multi_head_attention_forward`` applies, [n, 1 or H, L, S + extra keys] (None: none).

    As torch does: ``is_causal`` without ``key_padding_mask`` and ``need_weights`` replaces ``attn_mask`` by the
    causal (top-left) mask; otherwise ``attn_mask`` (2-D [L, S] or 3-D [n * H, L, S]) plus the key padding mask;
    the extra keys (``bias_k``, the zero token) are never masked."""
    extra = _extra_keys(module)
    if is_causal and key_padding_mask is None and not need_weights:
        allowed = torch.ones(length, source + extra, dtype=torch.bool, device=attn_mask.device).tril()
        return _additive(~allowed, dtype).expand(n, 1, -1, -1)
    parts = []
    if attn_mask is not None:
        am = _additive(attn_mask, dtype)
        parts.append(am.view(1, 1, length, source) if am.dim() == 2 else am.view(n, module.num_heads, length, source))
    if key_padding_mask is not None:
        parts.append(_additive(key_padding_mask, dtype).view(n, 1, 1, source))
    if not parts:
        return None
    mask = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    mask = F.pad(mask, (0, extra)) if extra else mask
    return mask.expand(n, *mask.shape[1:])


def projections(module: nn.MultiheadAttention) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of the q, k and v projections (views of the packed parameters)."""
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
    return list(zip(weights, biases))


def weights(module: nn.MultiheadAttention) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """The parameters holding the q, k and v projection weights (``in_proj_weight`` three times when packed)."""
    if module._qkv_same_embed_dim:
        return (module.in_proj_weight,) * 3
    return module.q_proj_weight, module.k_proj_weight, module.v_proj_weight


def project(module: nn.MultiheadAttention, xs: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """q [n, L, E], and k, v [n, S + extra, E] with ``bias_k``/``bias_v`` and the zero token appended (no grad)."""
    with torch.no_grad():
        q, k, v = (F.linear(x, w.detach(), None if b is None else b.detach())
                   for x, (w, b) in zip(xs, projections(module)))
        n, e = k.shape[0], module.embed_dim
        ks, vs = [k], [v]
        if module.bias_k is not None:
            ks.append(module.bias_k.detach().to(k.dtype).expand(n, 1, e))
            vs.append(module.bias_v.detach().to(v.dtype).expand(n, 1, e))
        if module.add_zero_attn:
            ks.append(k.new_zeros(n, 1, e))
            vs.append(v.new_zeros(n, 1, e))
        return q, torch.cat(ks, 1), torch.cat(vs, 1)


def core(module: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """The heads' output before ``out_proj``, [n, L, E], from the projections (batch first)."""
    n, length, e = q.shape
    h = module.num_heads

    def heads(t: Tensor) -> Tensor:
        return t.reshape(n, t.shape[1], h, e // h).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(n, length, e)


def _pad_tokens(x: Tensor, t: int) -> Tensor:
    """[n, s, d] -> [n, t, d] with zero tokens appended."""
    return x if x.shape[1] == t else F.pad(x, (0, 0, 0, t - x.shape[1]))


def _stacked(xs: list[Tensor], t: int) -> Dense:
    """Three token factors [n, s, d] (same d) as one factor of 3 groups [n, t, 3, d]."""
    return Dense(torch.stack([_pad_tokens(x, t) for x in xs], 2))


def _unpack(inp: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    q, k, v, *mask = inp
    return q, k, v, (mask[0] if mask else None)


class MultiheadAttentionRule(LayerRule):
    name = "MultiheadAttention"
    types = (nn.MultiheadAttention,)
    lai = True
    lai_last = False
    submodules = ("out_proj",)

    def record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> tuple[Tensor, ...]:
        """(query, key, value) batch first, and the additive mask [n, 1 or H, L, S'] when there is one."""
        call = _SIGNATURE.bind(module, *args, **kwargs)
        call.apply_defaults()
        a = call.arguments
        query, key, value = a["query"], a["key"], a["value"]
        if query.dim() != 3 or any(t.is_nested for t in (query, key, value)):
            raise unsupported(type(module).__name__, "unbatched (2-D) or nested inputs have no batch dimension")
        if not module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        mask = attention_mask(module, n, length, source, a["key_padding_mask"], a["attn_mask"], bool(a["is_causal"]),
                              bool(a["need_weights"]), query.dtype)
        return (query, key, value) if mask is None else (query, key, value, mask)

    def split_output(self, module: nn.Module, output: Any) -> tuple[Tensor, Callable[[Tensor], Any] | None]:
        """The attention output batch first (seq-first outputs are read transposed and handed on as a view)."""
        out, weights = output
        if module.batch_first:
            return out, None
        return out.transpose(0, 1), lambda t: (t.transpose(0, 1), weights)

    def _in_projection(self, module: nn.MultiheadAttention, xs: list[Tensor], ds: list[Tensor], ctx: Context
                       ) -> list[GhostPiece]:
        t = max(x.shape[1] for x in xs)
        bias = module.in_proj_bias
        if module._qkv_same_embed_dim:
            return weight_bias_pieces(module.in_proj_weight, bias, _stacked(ds, t), _stacked(xs, t), ctx)
        pieces = []
        for w, d, x in zip(weights(module), ds, xs):
            if ctx.scored(w):
                seg = Segment(Dense(tokens(d, d.shape[-1])), Dense(tokens(x, x.shape[-1])))
                pieces.append(GhostPiece((w,), seg, reshaper((w,), lambda m: [m])))
        if ctx.scored(bias):
            left = _stacked(ds, t)
            seg = Segment(left, ones_factor(left))
            pieces.append(GhostPiece((bias,), seg, reshaper((bias,), lambda m: [m[..., 0]])))
        return pieces

    def ghost_pieces(self, module: nn.Module, inp: tuple[Tensor, ...], grad_out: Tensor, ctx: Context
                     ) -> list[GhostPiece]:
        xq, xk, xv, mask = _unpack(inp)
        n, source, e = xq.shape[0], xk.shape[1], module.embed_dim
        inner = [p for p in (module.in_proj_weight, module.q_proj_weight, module.k_proj_weight,
                             module.v_proj_weight, module.in_proj_bias, module.bias_k, module.bias_v) if ctx.scored(p)]
        outer = [p for p in (module.out_proj.weight, module.out_proj.bias) if ctx.scored(p)]
        if not inner and not outer:
            return []
        q, k, v = project(module, (xq, xk, xv))
        pieces = []
        if inner:
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                o = core(module, *leaves, mask)
                dq, dk, dv = torch.autograd.grad(o, leaves, grad_out @ module.out_proj.weight.detach().to(o.dtype))
            o = o.detach()
            pieces += self._in_projection(module, [xq, xk, xv], [dq, dk[:, :source], dv[:, :source]], ctx)
            for p, d in ((module.bias_k, dk), (module.bias_v, dv)):
                if ctx.scored(p):
                    left = Dense(d[:, source].reshape(n, 1, 1, e))
                    pieces.append(GhostPiece((p,), Segment(left, ones_factor(left)), reshaper((p,), lambda m: [m])))
        else:
            with torch.no_grad():
                o = core(module, q, k, v, mask)
        pieces += weight_bias_pieces(module.out_proj.weight, module.out_proj.bias, Dense(tokens(grad_out, e)),
                                     Dense(tokens(o, e)), ctx)
        return pieces

    def lai_params(self, module: nn.Module) -> list[nn.Parameter]:
        """The four linear maps' weights and biases: ``bias_k``/``bias_v`` (extra key/value tokens) have no LAI
        term."""
        extra = {id(module.bias_k), id(module.bias_v)}
        return [p for p in super().lai_params(module) if id(p) not in extra]

    def lai_activation(self, module: nn.Module, inp: tuple[Tensor, ...], ctx: Context) -> Dense | None:
        xq, xk, xv, mask = _unpack(inp)
        t = max(xq.shape[1], xk.shape[1])
        b_on = ctx.scored(module.in_proj_bias)
        parts = [with_bias(x, ctx.scored(w), b_on) for x, w in zip((xq, xk, xv), weights(module))]
        w_out, b_out = module.out_proj.weight, module.out_proj.bias
        if ctx.scored(w_out) or ctx.scored(b_out):
            with torch.no_grad():
                parts.append(with_bias(core(module, *project(module, (xq, xk, xv)), mask), ctx.scored(w_out),
                                       ctx.scored(b_out)))
        parts = [_pad_tokens(p, t) for p in parts if p is not None]
        return Dense(torch.cat(parts, -1).unsqueeze(2)) if parts else None


register_layer(MultiheadAttentionRule())
