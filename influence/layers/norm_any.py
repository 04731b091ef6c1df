"""Elementwise-affine parameters of any normalisation class: ``transformers``' RMSNorm/LayerNorm variants
(``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``, ``GemmaRMSNorm`` with its ``(1 + weight)``,
``T5LayerNorm``, ...), eval-mode ``BatchNorm``, ``GroupNorm``, affine ``InstanceNorm``.

Recognised by type (the torch classes) or by name (a class whose name ends in ``Norm``) with only vector
parameters and no trainable submodule; the forward itself is not assumed: the per-sample gradients are the
module's own vector-Jacobian product (``influence.layers.local``), exact for any forward, and checked against
autograd by the capture's verification like every rule. ``nn.LayerNorm``/``nn.RMSNorm`` with their own forward
keep their closed-form rule (``norm.py``). BatchNorm must use running statistics (eval mode, as the capture
requires, and ``track_running_stats=True``): batch statistics would couple the samples. No LAI term.
"""

from __future__ import annotations

from torch import nn

from ..compat import BATCHNORM, INSTANCENORM
from ..errors import UndefinedGradientError
from .base import register_layer
from .local import LocalRule

TORCH_NORMS = (BATCHNORM, nn.GroupNorm, INSTANCENORM, nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
CLOSED_FORM = tuple(c.forward for c in (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())))


class AnyNormRule(LocalRule):
    name = "normalisation (elementwise affine)"

    def matches(self, module: nn.Module) -> bool:
        if type(module).forward in CLOSED_FORM:
            return False
        own = list(module.parameters(recurse=False))
        if not own or any(p.dim() != 1 for p in own):
            return False
        if any(p.requires_grad for c in module.children() for p in c.parameters()):
            return False
        return isinstance(module, TORCH_NORMS) or type(module).__name__.lower().endswith("norm")

    def check(self, name: str, module: nn.Module) -> None:
        if isinstance(module, BATCHNORM) and (
                not module.track_running_stats or module.running_mean is None):
            raise UndefinedGradientError(f"{name}: {type(module).__name__} without running statistics normalises "
                                         "with batch statistics even in eval mode, coupling the samples: "
                                         "per-sample influence is undefined")


register_layer(AnyNormRule())
