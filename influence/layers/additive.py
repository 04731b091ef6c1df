"""Parameters a module adds to (or concatenates with, or scales) its activations: class tokens, position
parameters, mask tokens (ViT's ``cls_token`` / ``position_embeddings``), learned scales.

Matched: a module owning trainable parameters none of which is called ``weight`` or ``bias`` (those belong to
layers with their own rules), that no other rule matches, and that is not recurrent or attention (their
weights are not of this kind). Its per-sample gradients are the module's own vector-Jacobian product
(``influence.layers.local``): for a parameter added at some positions, the sum of the output gradient at those
positions, exactly; for any other use, still exact. The module is called with one input tensor. No LAI term.
"""

from __future__ import annotations

from torch import nn

from .base import register_layer, registered_rules
from .local import LocalRule

EXCLUDED = (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)


class AdditiveParameterRule(LocalRule):
    name = "additive parameter"

    def matches(self, module: nn.Module) -> bool:
        own = [k for k, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own or any(k in ("weight", "bias") for k in own) or isinstance(module, EXCLUDED):
            return False
        return not any(r.matches(module) for r in registered_rules() if r is not self)


register_layer(AdditiveParameterRule())
