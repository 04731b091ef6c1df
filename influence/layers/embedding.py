"""``nn.Embedding``: dW = sum_t onehot(id_t) (x) b_t; ids equal to ``padding_idx`` add nothing, repeated ids add.

LAI's activation (and the theory's left factor) is the one-hot ids, so the activation Gram counts equal ids.
Ids of shape [1, T] (positions built once and broadcast) are expanded to the batch by the capture.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UndefinedGradientError
from ..factors import Dense, Index, Segment
from .base import Context, GhostPiece, LayerRule, TheoryFactor, padded_ids, register_layer, reshaper, tokens


class EmbeddingRule(LayerRule):
    name = "Embedding"
    types = (nn.Embedding,)
    shareable = True
    fold_tokens = True

    def check(self, name: str, module: nn.Module) -> None:
        if module.max_norm is not None:
            raise UndefinedGradientError(f"{name}: nn.Embedding with max_norm renormalises its weight in place "
                                         "during the forward pass, so scoring would change the model; use "
                                         "max_norm=None")
        if module.scale_grad_by_freq:
            raise UndefinedGradientError(f"{name}: nn.Embedding with scale_grad_by_freq scales gradients by batch "
                                         "frequencies, so per-sample gradients are undefined")

    def _ids(self, module: nn.Module, inp: Tensor) -> Index:
        return Index(padded_ids(inp.reshape(inp.shape[0], -1), module.padding_idx), module.num_embeddings)

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        w = module.weight
        if not ctx.scored(w):
            return []
        right = Dense(tokens(grad_out, module.embedding_dim))
        return [GhostPiece((w,), Segment(self._ids(module, inp), right), reshaper((w,), lambda m: [m]))]

    def lai_activation(self, module: nn.Module, inp: Tensor, ctx: Context) -> Index | None:
        return self._ids(module, inp) if ctx.scored(module.weight) else None

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        if not ctx.scored(module.weight):
            return None
        ids = self._ids(module, inp)
        n, t, d = inp.shape[0], ids.tokens, module.embedding_dim
        return TheoryFactor(ids, lambda j: j.reshape(n, j.shape[1], 1, t, d), "token")


register_layer(EmbeddingRule())
