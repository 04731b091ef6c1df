"""``nn.Embedding`` subclasses with their own ``forward`` (OPT's learned positions build their ids from the
attention mask; Gemma's scaled word embeddings multiply the rows by ``embed_scale``).

The forward's argument is not the ids it looks up, so the rule records the ids ``F.embedding`` actually
receives: it re-runs the module's ``forward`` on the same arguments (no autograd, no hooks) under a
``TorchFunctionMode`` that notes the input of the one ``F.embedding`` call reading ``module.weight``. The output
must be that lookup itself, or the lookup times the module's scalar ``embed_scale`` (Gemma); then
dW = sum_t onehot(id_t) (x) (scale * b_t) exactly as for ``nn.Embedding``, and LAI's activation is the one-hot
ids. Anything else (no lookup, several, another transformation) is not factorable: the parameters go to
Exact. Options are checked as for ``nn.Embedding`` (``max_norm``, ``scale_grad_by_freq`` refused).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..compat import marks
from ..factors import Dense, Segment
from .base import Context, GhostPiece, TheoryFactor, register_layer, reshaper, tokens, unsupported
from .embedding import EmbeddingRule


class _Lookups(TorchFunctionMode):
    """Notes (ids, output) of every ``F.embedding`` call whose weight is ``weight``."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight, self.calls = weight, []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.embedding:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if weight is self.weight:
                pad = args[2] if len(args) > 2 else kwargs.get("padding_idx")
                self.calls.append((args[0] if args else kwargs["input"], out, pad))
        return out


def _scale(module: nn.Module) -> Tensor | None:
    s = getattr(module, "embed_scale", None)
    if isinstance(s, Tensor) and s.numel() == 1:
        return s
    if isinstance(s, (int, float)):
        return torch.tensor(float(s))
    return None


class EmbeddingLookupRule(EmbeddingRule):
    name = "Embedding subclass (recorded lookup)"
    types = (nn.Embedding,)

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding) and type(module).forward is not nn.Embedding.forward

    def record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor:
        with torch.no_grad(), _Lookups(module.weight) as seen:
            again = type(module).forward(module, *args, **kwargs)
        if len(seen.calls) != 1 or not isinstance(output, Tensor):
            raise unsupported(type(module).__name__, f"its forward made {len(seen.calls)} lookups of its weight")
        ids, looked, pad = seen.calls[0]
        if not isinstance(ids, Tensor) or ids.is_floating_point():
            raise unsupported(type(module).__name__, "its lookup ids are not an integer tensor")
        if pad != module.padding_idx:
            raise unsupported(type(module).__name__, f"its lookup uses padding_idx={pad}, not {module.padding_idx}")
        if not torch.equal(again, output.detach()):
            raise unsupported(type(module).__name__, "its forward is not deterministic")
        scale = _scale(module)
        plain = looked.shape == output.shape and torch.equal(looked, output.detach())
        scaled = scale is not None and looked.shape == output.shape and torch.equal(
            looked * scale.to(looked.dtype), output.detach())
        if not (plain or scaled):
            raise unsupported(type(module).__name__, "its output is not the lookup (or the lookup times embed_scale)")
        marks(module)["_influence_lookup_scaled"] = bool(scaled and not plain)
        return ids

    def _factor_scale(self, module: nn.Module, like: Tensor) -> Tensor | float:
        if marks(module).get("_influence_lookup_scaled"):
            return _scale(module).to(like.dtype)
        return 1.0

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        w = module.weight
        if not ctx.scored(w):
            return []
        right = Dense(tokens(grad_out * self._factor_scale(module, grad_out), module.embedding_dim))
        return [GhostPiece((w,), Segment(self._ids(module, inp), right), reshaper((w,), lambda m: [m]))]

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        return None  # the theory's Jacobian layout assumes the lookup is the output


register_layer(EmbeddingLookupRule())
