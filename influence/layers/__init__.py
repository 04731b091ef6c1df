"""The one registry of layer rules that Ghost, LAI, TracIn's last layer, ``theory`` and curation all read.

A layer family is one module here holding one :class:`LayerRule` subclass and a ``register_layer(...)`` call;
adding a layer = one file plus one import line below. Users register their own rules with
``influence.register_layer(rule)`` (later registrations take precedence over earlier ones).

Rule API (``influence.layers.base``), for a module ``m`` of the family, n = batch size:

* ``types`` (class attribute): the classes whose ``forward`` the rule understands. ``matches(m)`` is True when
  ``m`` is an instance of one of them AND ``type(m).forward`` is that class's ``forward``: a subclass that
  defines its own ``forward`` (OPT's learned positions subclass ``nn.Embedding``) is not matched by the base
  rule; it needs its own rule. Override ``matches`` for classes recognised another way (``HFConv1D``).
* ``check(name, m)``: raise ``UnsupportedLayerError`` for options without an exact factorisation (the
  parameters then go to Exact under ``fallback="auto"``), or ``UndefinedGradientError`` to refuse outright.
* ``record(m, args, kwargs, output) -> Tensor``: the tensor the rule factors, from one call's arguments (default:
  the first positional argument). The capture requires its leading dimension to be n (a leading 1 with an
  output of leading 1 is expanded to n, for position ids built once and broadcast; with ``fold_tokens = True``
  a leading k * n on input and output is read as [n, k, ...] tokens). Anything else routes the module's
  parameters to Exact. A rule may record a tuple of tensors, each with leading dimension n (attention).
* ``split_output(m, output) -> (Tensor, rebuild | None)``: the output tensor whose gradient is read (default: the
  output itself) and how to rebuild the module's return value around it (a tuple, a seq-first layout).
* ``lai_last``: whether last-layer LAI/TracIn may take the layer as the output layer (False for attention).
* ``submodules``: names of submodules whose parameters the rule factors too (used but never called by the
  module's forward, like attention's ``out_proj``); ``factored(m, rule)`` lists the parameters a rule covers.
* ``ghost_pieces(m, inp, grad_out, ctx) -> list[GhostPiece]``: ``inp`` [n, ...] from ``record``, ``grad_out``
  [n, *output.shape[1:]] = d(sum_i l_i)/d(output). Each ``GhostPiece(params, Segment(L, R), unpack)`` states
  G_i = sum_t L_{i,t} (x) R_{i,t} for ``params`` (factors: ``influence.factors.Dense`` [n, T, G, p],
  ``Index`` [n, T], or ``Patches``, a convolution's input kept unfolded: see ``influence.patches``); ``unpack``
  maps the [G, p, q] sum over samples to tensors shaped like ``params``. Cover only parameters with
  ``ctx.scored(p)``; do not merge a parameter in ``ctx.shared`` with another one.
  The capture verifies the pieces (``influence.verify``): summed over samples they must equal autograd's batch
  gradient, and on the first call per model and input signature two samples are compared with autograd's
  per-sample gradients; ``unpack`` must be a bijective slicing/reshape of the matrix (the check relies on it).
* ``lai_activation(m, inp, ctx) -> Dense [n, T, 1, p] | Index [n, T] | None``: LAI's activation term (a bias
  as a column of ones), or None (``lai = False`` families such as norms are skipped and listed by LAI).
* ``theory_factor(m, inp, ctx) -> TheoryFactor | None``: the Ghost left factor x_{tau,g} and how to lay out the
  layer's Jacobian [n, F, *out] as [n, F, G, tau, q], with ``kind`` "token" / "flat" / "norm" (None: the
  theory does not cover the family).
* ``shareable``: whether a parameter may be shared between modules of shareable rules (e.g. tied
  embedding/output weights; pieces of all uses merge into one block when their orientations agree).

``Context(shared, excluded)``: parameter ids used by several modules / routed away; ``ctx.scored(p)`` says whether
to factor ``p``. Hooks for what a family needs around the passes: ``register_capture_context`` (entered around every
recording pass, ``capture_context``; attention's unfused path) and ``register_float64_mode`` (entered while a rule
re-runs a float64 module, ``float64_mode``; ``influence.hf`` registers ``KeepFloat64``). Helpers for rules:
``tokens``, ``weight_bias_pieces``, ``with_bias``, ``padded_ids``, ``reshaper``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from ..factors import Factor
from .additive import AdditiveParameterRule  # noqa: E402
from .attention import MultiheadAttentionRule  # noqa: E402
from .base import (
    Context,
    GhostPiece,
    LayerRule,
    TheoryFactor,
    capture_context,
    factored,
    float64_mode,
    make_block,
    owner_names,
    padded_ids,
    register_capture_context,
    register_float64_mode,
    register_layer,
    registered_rules,
    registry_version,
    reshaper,
    rule_for,
    tokens,
    trainable,
    weight_bias_pieces,
    with_bias,
)
from .conv import ConvRule, conv_pads, unfold_conv_input
from .embedding import EmbeddingRule
from .embedding_lookup import EmbeddingLookupRule  # noqa: E402
from .linear import HFConv1D, HFConv1DRule, LinearRule
from .norm import AffineNormRule, LayerNormRule, RMSNormRule
from .norm_any import AnyNormRule  # noqa: E402 - registered after the closed-form norms


def _rule(module: nn.Module) -> LayerRule:
    rule = rule_for(module)
    if rule is None:
        raise UnsupportedLayerError(f"no layer rule for {type(module).__name__}")
    return rule


def check_supported(name: str, module: nn.Module) -> None:
    """Raise ``UnsupportedLayerError`` when ``module`` has no rule or its rule refuses its options."""
    _rule(module).check(name, module)


def ghost_pieces(module: nn.Module, inp: Tensor, grad_out: Tensor, shared: set[int] | frozenset[int] = frozenset()
                 ) -> list[GhostPiece]:
    """Exact factorisation of one call's per-sample parameter gradients (all trainable parameters)."""
    return _rule(module).ghost_pieces(module, inp, grad_out, Context(frozenset(shared)))


def lai_activation(module: nn.Module, inp: Tensor) -> Factor | None:
    """LAI's activation factor for one call (None when the layer has no LAI term)."""
    rule = rule_for(module)
    return None if rule is None or not rule.lai else rule.lai_activation(module, inp, Context())


__all__ = [
    "Context", "GhostPiece", "LayerRule", "TheoryFactor", "register_layer", "registered_rules", "registry_version",
    "rule_for", "trainable", "tokens", "weight_bias_pieces", "with_bias", "padded_ids", "reshaper", "make_block",
    "owner_names", "factored", "HFConv1D", "conv_pads", "unfold_conv_input", "check_supported", "ghost_pieces",
    "lai_activation", "LinearRule", "HFConv1DRule", "ConvRule", "EmbeddingRule", "AffineNormRule", "LayerNormRule",
    "RMSNormRule", "AnyNormRule", "EmbeddingLookupRule", "AdditiveParameterRule",
    "MultiheadAttentionRule", "register_capture_context", "capture_context", "register_float64_mode", "float64_mode",
]
