"""Which layers to score, and hooks that record their inputs (and output gradients) in one pass.

``plan`` checks the model once (BatchNorm and stochastic modules in train mode are refused), finds every
trainable module's rule in the layer registry (``influence.layers``) and lists what the factorisation cannot
cover (no rule, options the rule refuses, parameters shared outside shareable rules) as ``routed``. Plans are
cached per model (weakly) and reused while ``plan_key`` (modules, flags, settings, parameters, registry version)
is unchanged; ``clear_plans`` forgets them.
``capture_forward`` records layer inputs under ``no_grad`` (LAI); ``capture_backward`` also reads every
recorded layer output's gradient with one ``autograd.grad`` call that never writes ``.grad`` (Ghost, theory),
optionally with autograd's batch gradient of some parameters and per-sample gradients of a few samples
(the verification in ``influence.verify``).

Every recorded call must have the batch as the leading dimension of its input and output: a leading 1 on both
(position ids built with shape [1, T] and broadcast) is read as one call serving every sample, and for rules with
``fold_tokens`` a leading k * n on both is read as [n, k, ...] (flattened tokens, confirmed by the verification).
Any other call is listed in ``Capture.bad`` and its module's parameters are not factored.

Recording never changes what the model computes: the recorder returns the module's own output (or, for rules
with ``protect_output``, a copy of it with equal values). What a rule needs in another layout is kept on the side:
a shared call's input expanded to n; its per-sample output gradients are read in the backward at the operations
that broadcast the output against the batch (``_broadcast_gradients``: additions, subtractions, ``expand``),
and a shared call whose output is used any other way (reduced over its leading dimension, multiplied, ...) is
listed in ``Capture.bad``.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .batch import LossFn, call_model, output_tensor
from .checks import check_loss_fn, check_model
from .errors import (InPlaceModificationError, SharedParameterError, StochasticModuleError,
                     TrainModeBatchNormError, UndefinedGradientError, UnsupportedLayerError, named_checkpointing_errors)
from .factors import Block
from .layers import Context, GhostPiece, LayerRule, factored, make_block, owner_names, registry_version, rule_for
from .layers.attention import unfused_attention
from .losses import output_gradient, per_sample_losses
from .paths import input_nodes, unexplained

FALLBACKS = ("auto", "error", "exact")
STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.RReLU, nn.MultiheadAttention)


def _each(x: Tensor | tuple[Tensor, ...], f: Any) -> Any:
    """``f`` of a recorded input, or of each of its tensors when a rule records several."""
    return tuple(f(t) for t in x) if isinstance(x, tuple) else f(x)


def check_batchnorm(model: nn.Module) -> None:
    """Refuse BatchNorm in train mode, or without running statistics (batch statistics in eval mode too, trainable
    or frozen): it couples the samples of a batch, so per-sample influence is undefined."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise TrainModeBatchNormError(
                f"{name or 'model'}: {type(m).__name__} is in train mode; it couples the samples of a batch so "
                "per-sample influence is undefined. Call model.eval() (or put the BatchNorm layers in eval mode) "
                "before scoring.")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or m.running_var is None):
            # trainable or frozen alike (a frozen one still couples the samples, and with one sample torch raises)
            raise UndefinedGradientError(
                f"{name or 'model'}: {type(m).__name__} without running statistics normalises with batch statistics "
                "even in eval mode, so it couples the samples of a batch and per-sample influence is undefined. "
                "Construct it with track_running_stats=True (and compute or load running statistics).")


def check_stochastic(model: nn.Module) -> None:
    """Refuse Dropout-like modules in train mode (with a nonzero rate): every call would score differently."""
    for name, m in model.named_modules():
        if isinstance(m, STOCHASTIC) and m.training and getattr(m, "p", getattr(m, "dropout", 1.0)) > 0:
            raise StochasticModuleError(
                f"{name or 'model'}: {type(m).__name__} is in train mode, so the forward pass is random and every "
                "call would give different scores. Call model.eval() (or put this module in eval mode) first.")


def check_modes(model: nn.Module) -> None:
    check_batchnorm(model)
    check_stochastic(model)


class Factoring(NamedTuple):
    """``layers_of``: parameter id -> the layers (plan names) whose rule factors it; ``params_of``: layer -> the
    trainable parameters its rule factors (``layers.factored``)."""

    layers_of: dict[int, list[str]]
    params_of: dict[str, list[nn.Parameter]]


@dataclass
class Plan:
    """The trainable layers of a model: those with a rule (``modules``, ``rules``) and the rest.

    ``routed``: parameter id -> (kind, reason) for parameters the factorisation does not cover (kind
    ``"unsupported"`` or ``"shared"``); ``names``: id -> name in ``model.named_parameters()`` of every trainable
    parameter."""

    modules: dict[str, nn.Module]
    unsupported: dict[str, nn.Module]
    shared: set[int]
    owners: dict[int, str]
    rules: dict[str, LayerRule] = field(default_factory=dict)
    routed: dict[int, tuple[str, str]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    fallback: str = "auto"
    _factoring: "Factoring | None" = field(default=None, repr=False, compare=False)

    def factoring(self) -> "Factoring":
        """Which layers factor each parameter and which parameters each layer factors (built once per plan: the
        graph check of every capture reads it)."""
        if self._factoring is None:
            layers_of: dict[int, list[str]] = defaultdict(list)
            params_of: dict[str, list[nn.Parameter]] = {}
            for name, m in self.modules.items():
                params_of[name] = factored(m, self.rules[name])
                for p in params_of[name]:
                    layers_of[id(p)].append(name)
            self._factoring = Factoring(dict(layers_of), params_of)
        return self._factoring

    def scored_params(self, excluded: set[int] | frozenset[int] = frozenset()) -> list[nn.Parameter]:
        """Trainable parameters of modules with a rule, minus ``routed`` and ``excluded`` (each once)."""
        out, seen = [], set()
        for m in self.modules.values():
            for p in m.parameters(recurse=False):
                if p.requires_grad and id(p) not in seen and id(p) not in self.routed and id(p) not in excluded:
                    seen.add(id(p))
                    out.append(p)
        return out

    def context(self, excluded: set[int] | frozenset[int] = frozenset()) -> Context:
        return Context(frozenset(self.shared), frozenset(self.routed) | frozenset(excluded))


def check_fallback(fallback: str | None) -> str:
    """``None`` (the old default) means ``"auto"``."""
    fallback = "auto" if fallback is None else fallback
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    return fallback


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, Plan]]]" = weakref.WeakKeyDictionary()
_SCALARS = (bool, int, float, str, type(None))


def _settings(m: nn.Module) -> tuple:
    """The module's plain settings (attributes holding a number, string, None or a tuple of those: stride,
    padding_mode, dropout p, max_norm, ...), which rules' ``check`` and the mode checks read."""
    return tuple((k, v) for k, v in m.__dict__.items()
                 if type(v) in _SCALARS or (type(v) is tuple and all(type(e) in _SCALARS for e in v)))


def plan_key(model: nn.Module) -> tuple:
    """Everything a :class:`Plan` depends on: the registry version and, for every module, its name, identity,
    class, train/eval flag, plain settings, which buffers are set, and each own parameter's identity,
    ``requires_grad`` and shape. Equal keys give equal plans (identities are of objects the plan keeps alive,
    or enter the plan only through names and flags that the key holds too)."""
    mods = []
    for name, m in model.named_modules():
        params = tuple((k, None) if p is None else (k, id(p), p.requires_grad, p.shape)
                       for k, p in m._parameters.items())
        buffers = tuple(k for k, b in m._buffers.items() if b is not None)
        mods.append((name, id(m), type(m), m.training, params, buffers, _settings(m)))
    return registry_version(), tuple(mods)


def clear_plans(model: nn.Module | None = None) -> None:
    """Forget cached plans (of one model, or of all)."""
    if model is None:
        _PLANS.clear()
    else:
        _PLANS.pop(model, None)


def _copy(pl: Plan) -> Plan:
    """A plan with its own containers (callers may not share mutable state through the cache)."""
    return Plan(dict(pl.modules), dict(pl.unsupported), set(pl.shared), dict(pl.owners), dict(pl.rules),
                dict(pl.routed), dict(pl.names), pl.fallback)


def plan(model: nn.Module, fallback: str | None = "auto") -> Plan:
    """Check ``model`` and list the layers to capture; nothing is refused here except modes (BatchNorm or
    stochastic modules in train mode) and layer options whose per-sample gradients are undefined. Estimators
    decide what routed parameters mean (``influence.routing``).

    Cached per model (weakly) and fallback: a call whose :func:`plan_key` equals the cached plan's returns a copy
    of it without walking the registry again; any change the key sees (a module swapped, a parameter replaced
    or frozen, train/eval, a setting, a rule registered) plans again."""
    check_model(model)
    fallback = check_fallback(fallback)
    key = plan_key(model)
    hit = _PLANS.get(model, {}).get(fallback)
    if hit is not None and hit[0] == key:
        return _copy(hit[1])
    pl = _plan(model, fallback)
    held = {id(m) for m in (*pl.modules.values(), *pl.unsupported.values())}
    if id(model) not in held:  # a cached plan holding the model itself would keep it alive forever
        _PLANS.setdefault(model, {})[fallback] = (key, _copy(pl))
    return pl


def _plan(model: nn.Module, fallback: str) -> Plan:
    check_modes(model)
    modules, unsupported, rules = {}, {}, {}
    routed: dict[int, tuple[str, str]] = {}
    users: dict[int, list[str]] = defaultdict(list)
    for name, m in model.named_modules():
        direct, rule = [p for p in m.parameters(recurse=False) if p.requires_grad], rule_for(m)
        if not factored(m, rule):
            continue
        for p in direct:
            users[id(p)].append(name)
        why = None
        if rule is None:
            why = f"no layer rule for {type(m).__name__}"
        else:
            try:
                rule.check(name or type(m).__name__, m)
            except UndefinedGradientError:
                raise
            except UnsupportedLayerError as e:
                why = str(e)
        if why is None:
            modules[name], rules[name] = m, rule
        else:
            unsupported[name] = m
            for p in direct:
                routed.setdefault(id(p), ("unsupported", f"{name or 'model'} ({type(m).__name__}): {why}"))
    shared = {pid for pid, names in users.items() if len(names) > 1}
    for pid in shared:
        names = users[pid]
        if any(n in unsupported for n in names) or not all(rules[n].shareable for n in names):
            routed.setdefault(pid, ("shared", f"a parameter is shared by modules {names}; the fast path handles "
                                              "sharing only between Linear, Conv and Embedding-like layers"))
    pl = Plan(modules, unsupported, shared, owner_names(model), rules, routed,
              {id(p): n for n, p in model.named_parameters() if p.requires_grad}, fallback)
    return pl


def output_layer(cap: "Capture", pl: Plan) -> str:
    """The layer whose output tensor IS the model output (checked by object identity), so its output gradient
    is g; it must have an LAI term (last-layer LAI, last-layer TracIn)."""
    from .errors import InfluenceError
    name = cap.producer
    if name is None:
        raise InfluenceError("the last layer's output is not the model output (the model transforms it further, or "
                             "the output layer has no layer rule), so no layer's output gradient is g; last-layer "
                             "LAI would not be exact")
    if not (pl.rules[name].lai and pl.rules[name].lai_last):
        raise InfluenceError(f"{name}: the output layer is a {type(pl.modules[name]).__name__}, which has no LAI "
                             "term exact at the output; last-layer LAI needs an output layer such as Linear")
    return name


@dataclass
class Call:
    """One recorded call: ``inp`` [n, ...] (what the rule reads), ``out`` the output while a backward needs it,
    ``versions`` of input and output at record time, ``out_ref`` a weak reference to the output tensor object
    (identity with the model output, never a pointer comparison), ``fold`` k when a leading k * n was read as
    [n, k, ...], ``shared`` when one call with leading dimension 1 served the whole batch (``inp`` is then the
    input expanded to n; the output is the module's own, [1, ...])."""

    inp: Tensor
    out: Tensor | None
    versions: tuple[int, int]
    out_ref: Any = None
    fold: int = 0
    shared: bool = False


@dataclass
class Capture:
    """What one pass over a batch recorded.

    ``calls[name]``: one entry per call of the layer (input [n, ...], output gradient [n, ...] in ``grads`` after
    ``capture_backward``); ``order``: layer names in order of first call; ``f``: model output [n, ...];
    ``g``: dl_i/df_i, same shape; ``losses``: [n]; ``bad``: layer name -> why a call could not be recorded;
    ``producer``: the recorded layer whose output tensor IS the model output (or None); ``param_grads``:
    id(param) -> autograd's gradient of sum_i l_i; ``probe``: [(weights w [n], {id(param): gradient of
    sum_i w_i l_i})]; ``graph_losses``: [n] losses attached to the forward's autograd graph (``capture_forward(keep_graph=True)``); ``checked``: block key -> autograd's
    gradient of sum_i l_i laid out as the block's [G, p, q] matrix, for the blocks that passed the sum check
    (``influence.verify``; a reference side uses it instead of summing the factors)."""

    calls: dict[str, list[Call]]
    order: list[str]
    f: Tensor
    g: Tensor
    losses: Tensor
    grads: dict[str, list[Tensor]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    producer: str | None = None
    param_grads: dict[int, Tensor] = field(default_factory=dict)
    probe: list[tuple[Tensor, dict[int, Tensor]]] = field(default_factory=list)
    graph_losses: Tensor | None = None
    checked: dict[Any, Tensor] = field(default_factory=dict)


class Recorder:
    """Records each call of ``modules``: its input (and output, when ``keep_output``), see ``__enter__``."""

    def __init__(self, modules: dict[str, nn.Module], n: int, keep_output: bool,
                 rules: dict[str, LayerRule] | None = None, track_inputs: bool = False) -> None:
        self.modules, self.n, self.keep_output, self.track_inputs = modules, n, keep_output, track_inputs
        self.inputs: dict[str, list[frozenset]] = defaultdict(list)  # autograd nodes of each call's tensor inputs
        # set while capture_backward's autograd.grad runs: a layer called then is activation checkpointing
        # re-running the forward (use_reentrant=False), not a call of its own; the verification checks the result
        self.in_backward = False
        self.rules = rules if rules is not None else {k: rule_for(m) for k, m in modules.items()}
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self.order: list[str] = []
        self.bad: dict[str, str] = {}
        self.handles: list[Any] = []

    def _hook(self, name: str):
        rule = self.rules[name]

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any):
            if self.in_backward:
                return None
            try:
                x = rule.record(module, args, kwargs, output)
                output, rebuild = rule.split_output(module, output)
            except Exception as e:  # noqa: BLE001 - the rule cannot read this call: not factorable
                self.bad.setdefault(name, f"its rule could not read the call ({type(e).__name__}: {e})")
                return None
            single = not isinstance(x, tuple)  # a rule may record several tensors
            xs = (x,) if single else x
            if not (isinstance(output, Tensor) and output.dim() > 0 and
                    all(isinstance(t, Tensor) and t.dim() > 0 for t in xs)):
                self.bad.setdefault(name, "the call's input or output is not a tensor with a batch dimension")
                return None
            n, li, lo = self.n, xs[0].shape[0], output.shape[0]
            replaced, fold, shared = None, 0, False
            if lo == n and (li == n if single else all(t.shape[0] == n for t in xs)):
                pass
            elif single and n > 1 and li == 1 and lo == 1:
                # one call for the whole batch (position ids [1, T]): the rule reads the input expanded to n, kept
                # here; the module's output stays its own (the per-sample output gradients are read where the
                # output is broadcast against the batch, ``_broadcast_gradients``)
                x, shared = x.expand(n, *x.shape[1:]), True
            elif single and rule.fold_tokens and li == lo and li % n == 0:
                fold = li // n
                x = x.reshape(n, fold, *x.shape[1:])
            else:
                self.bad.setdefault(name, f"leading dimensions (input {tuple(xs[0].shape)}, output "
                                          f"{tuple(output.shape)}) are not the batch (n={n})")
                return None
            if name not in self.calls:
                self.order.append(name)
            out = output if self.keep_output else None
            if single:
                versions, inp = (x._version, output._version), _kept(x)
            else:
                versions, inp = (tuple(t._version for t in x), output._version), tuple(_kept(t) for t in x)
            self.calls[name].append(Call(inp, out, versions, weakref.ref(output), fold, shared))
            if self.track_inputs:
                self.inputs[name].append(input_nodes(args, kwargs))
            if self.keep_output and replaced is None and getattr(rule, "protect_output", False):
                replaced = output.clone()  # in-place ops downstream (x += residual, ReLU(inplace)) modify the copy
                if shared:  # the copy is what the model broadcasts: read its per-sample gradients there
                    last = self.calls[name][-1]
                    last.out, last.versions = replaced, (last.versions[0], replaced._version)
            if rebuild is not None:  # e.g. a tuple output, or a seq-first output read transposed
                return rebuild(output if replaced is None else replaced)
            return replaced
        return hook

    def __enter__(self) -> "Recorder":
        """Record through each module's ``forward``, shadowed for the duration by an instance attribute that calls
        it and then the recording function (``_hook``, with a forward hook's signature and return convention).
        ``nn.Module.__call__`` still runs the module's own hooks around it; unlike ``register_forward_hook`` it
        keeps torch's fast call path for modules without hooks (a registered hook costs about 20 us per call
        on CPU, more than the recording itself), and the recording sees the output of ``forward`` before any
        forward hook of the user's replaces it. ``__exit__`` restores the attribute exactly (an instance
        ``forward`` set by other code, such as ``accelerate``'s hooks, included). One model must not be scored
        from several threads at once (as with any temporary change of a module's attributes)."""
        self.handles = []
        try:
            for name, m in self.modules.items():
                if self.rules.get(name) is not None:
                    self.handles.append(_shadow_forward(m, self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for restore in reversed(self.handles):
            restore()
        self.handles = []

    def producer(self, f: Tensor) -> str | None:
        """The layer whose last call's output tensor object is ``f`` (identity, not storage address); when a module
        returns its submodule's output unchanged (a wrapper with a rule of its own), the innermost one, whose hook
        fires first."""
        for name in self.order:
            if self.calls[name][-1].out_ref() is f:
                return name
        return None

    def check_versions(self) -> None:
        for name, calls in self.calls.items():
            for c in calls:
                out_v = c.out._version if c.out is not None else c.versions[1]
                if (_each(c.inp, lambda t: t._version), out_v) != c.versions:
                    raise InPlaceModificationError(
                        f"{name}: its input or output was modified in place after the layer ran (e.g. "
                        "ReLU(inplace=True) or `x += ...`); per-layer factors would be wrong. Use out-of-place ops.")


def _kept(t: Tensor) -> Tensor:
    """A recorded input as kept: detached from autograd (a tensor outside autograd as it is: detaching it would
    only make an alias)."""
    return t.detach() if t.requires_grad else t


_MISSING = object()


def _shadow_forward(module: nn.Module, record: Any) -> Any:
    """Set ``module.forward`` (an instance attribute) to a function that calls the current ``forward`` and then
    ``record(module, args, kwargs, output)``, returning what ``record`` returns unless None (then the output);
    returns the function that restores the instance attribute as it was."""
    inner = module.forward
    before = module.__dict__.get("forward", _MISSING)

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        output = inner(*args, **kwargs)
        replaced = record(module, args, kwargs, output)
        return output if replaced is None else replaced

    module.__dict__["forward"] = forward

    def restore() -> None:
        if before is _MISSING:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = before
    return restore


def capture_forward(model: nn.Module, loss_fn: LossFn, batch: tuple[Any, Any], modules: dict[str, nn.Module],
                    n: int, where: str, keep_graph: bool = False,
                    rules: dict[str, LayerRule] | None = None) -> Capture:
    """Forward pass without autograd through the network: layer inputs, f, g (from the outputs) and losses.
    ``keep_graph``: run the forward with autograd instead and keep the per-sample losses attached to its graph
    in ``Capture.graph_losses`` (a training step then backpropagates the scoring forward). ``rules``: the rule of
    each module (a plan's ``rules``; looked up in the registry when not given)."""
    x, y = batch
    check_loss_fn(loss_fn)
    graph_losses = None
    with torch.set_grad_enabled(keep_graph), unfused_attention(), Recorder(modules, n, False, rules) as rec:
        f = output_tensor(call_model(model, x))
        producer = rec.producer(f)
        if keep_graph:
            graph_losses = per_sample_losses(loss_fn, f, y, n, where)
            rec.check_versions()
    losses, g = output_gradient(loss_fn, f.detach(), y, where)
    return Capture(dict(rec.calls), rec.order, f.detach(), g, losses, bad=dict(rec.bad), producer=producer,
                   graph_losses=graph_losses)


def capture_backward(model: nn.Module, loss_fn: LossFn, batch: tuple[Any, Any], modules: dict[str, nn.Module],
                     n: int, where: str, params: Sequence[nn.Parameter] = (), probe: Tensor | None = None,
                     rules: dict[str, LayerRule] | None = None, paths: Factoring | None = None) -> Capture:
    """Forward and one truncated backward of sum_i l_i: inputs and output gradients of every layer; in the same
    ``autograd.grad`` call the batch gradient of ``params``; with ``probe`` (weights w [n]) instead the gradient
    of sum_i w_i l_i, in a second backward pass through the retained graph (``param_grads`` is then empty: the
    weighted comparison subsumes the sum check, and the first pass computes no weight gradient). ``rules``: as in ``capture_forward``.
    ``paths`` (the plan's ``factoring()``): first check ``params`` on the forward's graph (``influence.paths``)
    and take autograd's gradient only of those whose paths the layer calls do not explain, with every parameter
    of their layers (``Capture.param_grads`` holds those; none when the graph explains every path)."""
    x, y = batch
    check_loss_fn(loss_fn)
    params = list(params)
    with torch.enable_grad(), unfused_attention(), \
            Recorder(modules, n, True, rules, track_inputs=paths is not None and bool(params)) as rec:
        f = output_tensor(call_model(model, x))
        producer = rec.producer(f)
        losses = per_sample_losses(loss_fn, f, y, n, where)
        rec.check_versions()
        names = [name for name in rec.order for _ in rec.calls[name]]
        outs = [c.out for name in rec.order for c in rec.calls[name]]
        shared = {k: o for k, (o, c) in enumerate(zip(outs, (c for name in rec.order for c in rec.calls[name])))
                  if c.shared and o.requires_grad}
        split = _broadcast_gradients(losses, shared, n) if shared else None
        if rec.track_inputs:
            requested = params
            params = _unexplained(losses, rec, params, paths)
            if split is not None and split.other:  # a shared call used other than broadcast: its layer's
                unsplit = {names[k] for k in split.other}  # parameters are flagged like an unexplained path
                flag = {id(p) for name in unsplit for p in paths.params_of.get(name, ())} - {id(p) for p in params}
                params = params + [p for p in requested if id(p) in flag]
        wanted = [o for o in outs if o.requires_grad]
        f_in = [f] if f.requires_grad else []
        probe = probe if params else None
        inputs = wanted + f_in + (params if probe is None else [])  # with a probe, its backward takes them
        rec.in_backward = True
        with named_checkpointing_errors(f"the {where} batch's backward"):
            try:
                got = torch.autograd.grad(losses.sum(), inputs, allow_unused=True,
                                          retain_graph=probe is not None) if inputs else ()
            finally:
                if split is not None:
                    split.remove()
            probed = []
            if probe is not None:
                gw = torch.autograd.grad((probe.to(losses.dtype) * losses).sum(), params, allow_unused=True)
                probed.append((probe, {id(p): dense_grad(p, v) for p, v in zip(params, gw)}))
    got_iter = iter(got)
    grads: dict[str, list[Tensor]] = defaultdict(list)
    calls: dict[str, list[Call]] = {}
    for k, (name, o, c) in enumerate(zip(names, outs, (c for name in rec.order for c in rec.calls[name]))):
        gr = next(got_iter) if o.requires_grad else None
        if c.shared:  # per-sample gradients [n, ...] of a call serving the whole batch
            gr, why = split.per_sample(k) if split is not None and k in shared else (None, None)
            if why is not None:
                rec.bad.setdefault(name, why)
            gr = o.new_zeros(n, *o.shape[1:]) if gr is None else gr
        gr = torch.zeros_like(o) if gr is None else gr
        grads[name].append(gr.reshape(n, c.fold, *gr.shape[1:]) if c.fold else gr)
        calls.setdefault(name, []).append(Call(c.inp, None, c.versions, c.out_ref, c.fold))
    g = next(got_iter, None) if f_in else None
    g = torch.zeros_like(f) if g is None else g
    param_grads = {id(p): dense_grad(p, v) for p, v in zip(params, got_iter)} if probe is None else {}
    return Capture(calls, rec.order, f.detach(), g, losses.detach(), dict(grads), dict(rec.bad), producer,
                   param_grads, probed)


class _Broadcasts:
    """The per-sample output gradients of shared calls (outputs [1, ...] serving the whole batch), read during one
    backward at the nodes that take such an output as an input: ``AddBackward0``, ``SubBackward0`` (the output's
    gradient is +-alpha times the node's incoming gradient, summed over broadcast dimensions) and
    ``ExpandBackward0``. The incoming gradient [n, ...] of such a node holds each sample's share in its own row,
    so d l_i / d o = coefficient * (row i summed to o's shape). The per-sample probe of the verification checks the
    result. Any other use makes the call not factorable."""

    SPLIT = {"AddBackward0", "SubBackward0", "ExpandBackward0"}

    def __init__(self, outs: dict[int, Tensor], n: int) -> None:
        self.outs, self.n = outs, n
        self.uses: dict[int, list[tuple[Any, float]]] = {k: [] for k in outs}  # call -> (node, coefficient)
        self.other: dict[int, str] = {}  # call -> a node that uses the output in a way that cannot be split
        self.seen: dict[Any, Tensor | None] = {}
        self.handles: list[Any] = []

    def find(self, root: Any) -> None:
        """Walk the graph from ``root``; hook every node that takes a shared call's output as an input."""
        want = {(o.grad_fn, o.output_nr): k for k, o in self.outs.items() if o.grad_fn is not None}
        seen, stack = {root}, [root]
        while stack:
            u = stack.pop()
            for j, (nxt, nr) in enumerate(u.next_functions):
                if nxt is None:
                    continue
                k = want.get((nxt, nr))
                if k is not None:
                    kind = u.name()
                    if kind not in self.SPLIT:
                        self.other.setdefault(k, kind)
                    else:
                        sign = -1.0 if kind == "SubBackward0" and j == 1 else 1.0
                        alpha = float(getattr(u, "_saved_alpha", 1)) if j == 1 and kind != "ExpandBackward0" else 1.0
                        self.uses[k].append((u, sign * alpha))
                        if u not in self.seen:
                            self.seen[u] = None
                            self.handles.append(u.register_prehook(self._keep(u)))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)

    def _keep(self, u: Any):
        def hook(grad_outputs: tuple) -> None:
            self.seen[u] = grad_outputs[0]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def per_sample(self, k: int) -> tuple[Tensor | None, str | None]:
        """(d l_i / d o for every sample i as [n, *o.shape[1:]] (None: o unused), or why it cannot be read)."""
        o, n = self.outs[k], self.n
        if k in self.other:
            return None, (f"its output [1, ...] serves the whole batch and is used by {self.other[k]}, which does "
                          "not broadcast it against the batch (per-sample output gradients cannot be read)")
        total = None
        for u, coef in self.uses[k]:
            g = self.seen.get(u)
            if g is None:
                continue
            if g.dim() < o.dim() or g.shape[0] != n:
                return None, (f"its output [1, ...] serves the whole batch, but {u.name()} does not broadcast it "
                              f"to the batch (gradient {tuple(g.shape)}, n={n})")
            if g.dim() == o.dim():
                part = g.sum_to_size(n, *o.shape[1:])
            else:
                part = g.sum_to_size(n, *([1] * (g.dim() - o.dim() - 1)), *o.shape).reshape(n, *o.shape[1:])
            part = part * coef if coef != 1.0 else part
            total = part if total is None else total + part
        return total, None


def _broadcast_gradients(losses: Tensor, outs: dict[int, Tensor], n: int) -> _Broadcasts:
    """Hooks reading the per-sample output gradients of shared calls (``outs``: call index -> output [1, ...]) in
    the next backward from ``losses`` (``_Broadcasts``); call ``remove`` after it."""
    split = _Broadcasts(outs, n)
    if losses.grad_fn is not None:
        split.find(losses.grad_fn)
    return split


def dense_grad(p: Tensor, g: Tensor | None) -> Tensor:
    """Autograd's gradient of ``p`` as a dense tensor: zeros where unused, densified where sparse
    (``nn.Embedding(sparse=True)``: the layout changes, not the gradient)."""
    if g is None:
        return torch.zeros_like(p)
    return g.to_dense() if g.layout != torch.strided else g


def _unexplained(losses: Tensor, rec: Recorder, params: list[nn.Parameter], fac: Factoring) -> list[nn.Parameter]:
    """The parameters among ``params`` whose autograd paths the recorded calls do not explain
    (``influence.paths``), with every trainable parameter of the layers that factor them (a block is compared
    whole)."""
    layers_of, params_of = fac
    wanted = {id(p) for p in params}
    calls = {name: [(c.out, nodes) for c, nodes in zip(rec.calls[name], rec.inputs[name])] for name in rec.order}
    bad = unexplained(losses, calls, {pid: layers_of.get(pid, ()) for pid in wanted})
    todo = list(bad)
    while todo:  # close over the layers that share a flagged parameter
        for name in layers_of.get(todo.pop(), ()):
            for p in params_of[name]:
                if id(p) in wanted and id(p) not in bad:
                    bad.add(id(p))
                    todo.append(id(p))
    return [p for p in params if id(p) in bad]


def factor_blocks(cap: Capture, pl: Plan, ctx: Context) -> tuple[dict[tuple[int, ...], Block], dict[int, str]]:
    """Exact per-sample gradient factorisation of every parameter ``ctx.scored``, merged across calls and across
    modules that share a parameter. Returns (blocks keyed by parameter ids, {param id: why it could not be
    factored}) - a module whose calls could not be recorded or factored lists all its scored parameters."""
    pieces: dict[tuple[int, ...], list[GhostPiece]] = defaultdict(list)
    params: dict[tuple[int, ...], tuple] = {}
    failed: dict[int, str] = {}
    for name, module in pl.modules.items():
        if name in cap.bad:
            failed.update({id(p): f"{name}: {cap.bad[name]}" for p in module.parameters(recurse=False)
                           if ctx.scored(p)})
    for name in cap.order:
        if name in cap.bad:
            continue
        module, rule = pl.modules[name], pl.rules[name]
        got: list[GhostPiece] = []
        try:
            for call, grad in zip(cap.calls[name], cap.grads[name]):
                got += rule.ghost_pieces(module, call.inp, grad, ctx)
        except (UnsupportedLayerError, RuntimeError, ValueError, IndexError) as e:
            failed.update({id(p): f"{name}: {rule.name} could not factor the call ({type(e).__name__}: {e})"
                           for p in module.parameters(recurse=False) if ctx.scored(p)})
            continue
        if any(id(p) not in pl.names for pc in got for p in pc.params):  # e.g. a weight computed by a parametrization
            failed.update({id(p): f"{name}: its {rule.name} factors a tensor that is not a parameter of the model "
                                  "(a parametrization such as weight_norm computes it)"
                           for p in module.parameters(recurse=False) if ctx.scored(p)})
            continue
        for pc in got:
            key = tuple(id(p) for p in pc.params)
            pieces[key].append(pc)
            params[key] = pc.params
    blocks = {}
    for key, pcs in pieces.items():
        if any(k in failed for k in key):
            failed.update({k: failed.get(k) or f"{pl.owners[k]}: shares a parameter with a module that could not "
                                               "be factored" for k in key})
            continue
        dims = {(s.left.dim, s.right.dim, s.left.groups) for s in (pc.segment for pc in pcs)}
        if len(dims) > 1:
            failed.update({k: f"{pl.owners[k]}: modules sharing this parameter use it with different orientations "
                              f"{sorted(dims)}" for k in key})
            continue
        blocks[key] = make_block(params[key], pcs, pl.owners)
    return blocks, failed


def ghost_blocks(cap: Capture, pl: Plan, ctx: Context | None = None) -> dict[tuple[int, ...], Block]:
    """``factor_blocks`` that raises instead of listing failures (callers that do their own routing)."""
    blocks, failed = factor_blocks(cap, pl, pl.context() if ctx is None else ctx)
    if failed:
        why = "; ".join(sorted(set(failed.values())))
        if "orientations" in why:
            raise SharedParameterError(f"{why}; untie it or use influence.exact")
        raise UnsupportedLayerError(why)
    return blocks
