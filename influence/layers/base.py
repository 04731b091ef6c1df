"""The layer-rule API and the one registry every estimator reads (see the package docstring for the contract)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn

from ..errors import ArgumentTypeError, UnsupportedLayerError
from ..factors import Block, Dense, Factor, Index, Patches, Segment, ones_factor


def trainable(p: nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


@dataclass(frozen=True)
class Context:
    """What a rule needs to know about the whole model when it factors one call.

    ``shared``: ids of parameters used by more than one module (their blocks must not merge weight and bias);
    ``excluded``: ids of parameters routed away from the factorisation (scored by Exact, or skipped by LAI)."""

    shared: frozenset[int] = frozenset()
    excluded: frozenset[int] = frozenset()

    def scored(self, p: nn.Parameter | None) -> bool:
        """Whether ``p`` is trainable and factored here."""
        return trainable(p) and id(p) not in self.excluded


@dataclass
class GhostPiece:
    """A block contribution of one call of one module, keyed by the parameters it covers.

    ``segment``: sum_t L_t (x) R_t over the call's tokens (``influence.factors.Segment``); ``unpack`` maps the
    [G, p, q] matrix of that segment (summed over samples) to tensors shaped like ``params``."""

    params: tuple[nn.Parameter, ...]
    segment: Segment
    unpack: Callable[[Tensor], list[Tensor]]


@dataclass
class TheoryFactor:
    """What ``theory.terms`` needs of one layer call.

    ``left``: the Ghost left factor x_{tau,g} (the side that is not the output gradient), Dense [n, tau, G, p]
    or Index [n, tau]; ``jac``: maps the layer's per-sample Jacobian [n, F, *output_shape[1:]] to
    [n, F, G, tau, q] (q = output-gradient width per group); ``kind``: ``"token"`` (LAI pairs the layer's tau
    with f's tokens when the counts match), ``"flat"`` (LAI always uses the flattened activation, e.g.
    convolutions) or ``"norm"`` (no LAI term)."""

    left: Dense | Index
    jac: Callable[[Tensor], Tensor]
    kind: str


class LayerRule:
    """How the estimators treat one layer family. Subclass it, set ``types``, implement the methods, and pass an
    instance to :func:`register_layer`. See the package docstring for shapes."""

    #: short family name used in messages
    name: str = "layer"
    #: the classes whose ``forward`` this rule understands (a subclass with its own ``forward`` is not matched)
    types: tuple[type, ...] = ()
    #: whether the layer has an LAI activation term (False: its parameters are skipped by LAI, e.g. norms)
    lai: bool = True
    #: whether a parameter may be shared with other modules of shareable rules (blocks merged across modules)
    shareable: bool = False
    #: whether a leading dimension k * n of the recorded input/output may be read as [n, k, ...] tokens
    #: (flattened tokens); the verification pass confirms it per model and input signature
    fold_tokens: bool = False
    #: whether last-layer LAI and TracIn may take this layer as the output layer (its LAI activation pairs with
    #: its own output gradient); False where some parameters act before further computation (attention)
    lai_last: bool = True
    #: submodules whose parameters the rule factors with the module's own: the module's forward uses them
    #: without calling them (attention's ``out_proj``)
    submodules: tuple[str, ...] = ()

    def matches(self, module: nn.Module) -> bool:
        """True when ``module`` is an instance of one of ``types`` whose ``forward`` is that type's own."""
        fwd = getattr(type(module), "forward", None)
        return any(isinstance(module, t) and fwd is getattr(t, "forward", object()) for t in self.types)

    def lai_params(self, module: nn.Module) -> list[nn.Parameter]:
        """The trainable parameters whose gradient :meth:`lai_activation`'s term stands for (default: all that
        the rule factors when ``lai``, none otherwise); LAI lists the others as skipped."""
        return factored(module, self) if self.lai else []

    def check(self, name: str, module: nn.Module) -> None:
        """Raise ``UnsupportedLayerError`` for options of this family that have no exact factorisation."""

    def record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Tensor:
        """The tensor the factorisation reads, from one call's arguments: by default the first positional
        argument. It must have the batch (or 1, broadcast) as its leading dimension; a tuple of several tensors
        must each have the batch as leading dimension (no broadcast or folding)."""
        if args:
            return args[0]
        return next(v for v in kwargs.values() if isinstance(v, Tensor))

    def split_output(self, module: nn.Module, output: Any) -> tuple[Tensor, Callable[[Tensor], Any] | None]:
        """The output tensor whose gradient :meth:`ghost_pieces` reads, [n, ...], and how to rebuild the module's
        return value around it (None: that tensor is the return value). Default: the output itself."""
        return output, None

    def ghost_pieces(self, module: nn.Module, inp: Tensor, grad_out: Tensor, ctx: Context) -> list[GhostPiece]:
        """Exact factorisation of one call's per-sample gradients of the parameters ``ctx.scored``.

        ``inp``: what :meth:`record` returned, [n, ...]; ``grad_out``: d(sum_i l_i)/d(output), [n, ...]."""
        raise NotImplementedError

    def lai_activation(self, module: nn.Module, inp: Tensor, ctx: Context) -> Factor | None:
        """LAI's activation factor of one call: Dense [n, T, 1, p] (a bias as a column of ones) or Index
        [n, T]; None when the layer has no LAI term or none of its scored parameters needs one."""
        return None

    def theory_factor(self, module: nn.Module, inp: Tensor, ctx: Context) -> TheoryFactor | None:
        """The theory's view of one call (None: the theory does not cover this family)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


_RULES: list[LayerRule] = []
_VERSION = [0]


def register_layer(rule: LayerRule | type[LayerRule]) -> LayerRule | type[LayerRule]:
    """Add a layer rule to the registry; rules registered later take precedence (a user rule can override a
    built-in one for its types). Accepts an instance or a class (instantiated without arguments), so it also
    works as a class decorator; returns its argument."""
    instance = rule() if isinstance(rule, type) else rule
    if not isinstance(instance, LayerRule):
        raise ArgumentTypeError(f"register_layer expects a LayerRule, got {type(instance).__name__}")
    _RULES.append(instance)
    _VERSION[0] += 1
    return rule


def registered_rules() -> list[LayerRule]:
    """All rules, most recently registered first (the order they are tried in)."""
    return list(reversed(_RULES))


def registry_version() -> int:
    """Changes whenever a rule is registered (cached verdicts depend on it)."""
    return _VERSION[0]


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule that understands ``module`` (type and forward), or None."""
    for rule in reversed(_RULES):
        if rule.matches(module):
            return rule
    return None


_CAPTURE_CONTEXTS: list[Callable[[], ContextManager]] = []
_FLOAT64_MODES: list[Callable[[], ContextManager]] = []


def register_capture_context(factory: Callable[[], ContextManager]) -> Callable[[], ContextManager]:
    """Have ``factory()`` entered around every pass that records layer calls (``influence.capture``) or runs the
    model again to compare samples (``influence.coupling``): a rule whose layers torch would otherwise run another
    way (attention's fused fast path, ``layers.attention.unfused_attention``) registers what switches that off, so
    the generic recorder names no rule. Returns ``factory`` (usable as a decorator)."""
    _CAPTURE_CONTEXTS.append(factory)
    return factory


@contextlib.contextmanager
def capture_context() -> Iterator[None]:
    """Every registered capture context (:func:`register_capture_context`), entered in order of registration."""
    with contextlib.ExitStack() as stack:
        for factory in _CAPTURE_CONTEXTS:
            stack.enter_context(factory())
        yield


def register_float64_mode(factory: Callable[[], ContextManager]) -> Callable[[], ContextManager]:
    """Have ``factory()`` entered while a rule re-runs a module on a float64 input (``layers.local.module_vjp``),
    so code inside the module that casts to float32 stays in float64 (``influence.hf`` registers its
    ``KeepFloat64``); the latest registration is used. Returns ``factory``."""
    _FLOAT64_MODES.append(factory)
    return factory


def float64_mode() -> ContextManager:
    """The latest registered float64 mode (:func:`register_float64_mode`), entered as a context, or a context
    that does nothing when none is registered."""
    return _FLOAT64_MODES[-1]() if _FLOAT64_MODES else contextlib.nullcontext()


# ------------------------------------------------------------------ helpers shared by rules


def factored(module: nn.Module, rule: LayerRule | None) -> list[nn.Parameter]:
    """The trainable parameters ``rule`` factors for ``module``: its own and those of ``rule.submodules``."""
    mods = [module] + [module.get_submodule(s) for s in (rule.submodules if rule is not None else ())]
    return [p for m in mods for p in m.parameters(recurse=False) if p.requires_grad]


def tokens(x: Tensor, width: int) -> Tensor:
    """[n, ..., width] -> [n, T, 1, width]."""
    return x.reshape(x.shape[0], -1, 1, width)


def ones_like_last(like: Tensor) -> Tensor:
    return torch.ones(*like.shape[:-1], 1, dtype=like.dtype, device=like.device)


def reshaper(params: tuple[nn.Parameter, ...], split: Callable[[Tensor], list[Tensor]]):
    def unpack(m: Tensor) -> list[Tensor]:
        return [t.reshape(p.shape) for t, p in zip(split(m), params)]
    return unpack


def weight_bias_pieces(weight: nn.Parameter, bias: nn.Parameter | None, left: Dense, right: Dense | Patches,
                       ctx: Context, bias_side: str = "right") -> list[GhostPiece]:
    """Pieces for dW = sum L (x) R and db = sum (the factor on the other side from ``bias_side``), merged into
    one block augmented by a 1 on ``bias_side`` (the factor's unstored ``ones`` column, no copy) unless either
    parameter is shared. ``bias_side="right"``: the bias is an extra column of W (nn.Linear, conv); ``"left"``:
    an extra row (Conv1D, W stored (in, out))."""
    w_on, b_on = ctx.scored(weight), ctx.scored(bias)
    on_right = bias_side == "right"
    if w_on and b_on and id(weight) not in ctx.shared and id(bias) not in ctx.shared:
        if on_right:
            seg = Segment(left, right.with_ones())
            split = lambda m: [m[..., :-1], m[..., -1]]  # noqa: E731
        else:
            seg = Segment(left.with_ones(), right)
            split = lambda m: [m[..., :-1, :], m[..., -1, :]]  # noqa: E731
        return [GhostPiece((weight, bias), seg, reshaper((weight, bias), split))]
    pieces = []
    if w_on:
        pieces.append(GhostPiece((weight,), Segment(left, right), reshaper((weight,), lambda m: [m])))
    if b_on:
        ones = ones_factor(right if on_right else left)
        seg, split = (Segment(left, ones), lambda m: [m[..., 0]]) if on_right else \
            (Segment(ones, right), lambda m: [m[..., 0, :]])
        pieces.append(GhostPiece((bias,), seg, reshaper((bias,), split)))
    return pieces


def with_bias(x: Tensor, w_on: bool, b_on: bool) -> Tensor | None:
    """[x, 1] (only the parts whose parameter is scored) along the last axis; None when neither is."""
    parts = [x] if w_on else []
    if b_on:
        parts.append(ones_like_last(x))
    return torch.cat(parts, -1) if parts else None


def with_bias_factor(x: Tensor, w_on: bool, b_on: bool) -> Dense | None:
    """``with_bias`` as a factor without a copy: [x, 1] is ``x`` with an unstored ones column (``Dense.ones``);
    only ones [.., 1] when just the bias is scored; None when neither is. ``x``: [n, T, G, p]."""
    if w_on:
        return Dense(x, ones=b_on)
    return Dense(ones_like_last(x)) if b_on else None


def padded_ids(ids: Tensor, padding_idx: int | None) -> Tensor:
    """Ids with ``padding_idx`` replaced by -1 (contributes nothing)."""
    if padding_idx is None:
        return ids
    return torch.where(ids == padding_idx, torch.full_like(ids, -1), ids)


def owner_names(model: nn.Module) -> dict[int, str]:
    """Parameter id -> name of the module that owns it in ``model.named_parameters()`` (first occurrence)."""
    owners: dict[int, str] = {}
    for pname, p in model.named_parameters():
        owners.setdefault(id(p), pname.rpartition(".")[0])
    return owners


def make_block(key_params: tuple[nn.Parameter, ...], pieces: list[GhostPiece], owners: dict[int, str]) -> Block:
    return Block(owners[id(key_params[0])], [pc.segment for pc in pieces], list(key_params), pieces[0].unpack)


def unsupported(name: str, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{name}: {why}")

