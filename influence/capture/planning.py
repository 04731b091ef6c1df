"""Which layers to score: the plan of a model and its cache.

``plan`` checks the model once (BatchNorm and stochastic modules in train mode are refused, ``capture.modes``),
finds every trainable module's rule in the layer registry (``influence.layers``) and lists what the factorisation
cannot cover (no rule, options the rule refuses, parameters shared outside shareable rules) as ``routed``. Plans
are cached per model (weakly, an ``influence.caches.ModelCache``) and reused while ``plan_key`` (modules, flags,
settings, parameters, registry version) is unchanged; ``clear_plans`` forgets them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from ..caches import ModelCache
from ..checks import check_model
from ..compat import own_buffers, own_parameters
from ..errors import InvalidArgumentError, UndefinedGradientError, UnsupportedLayerError
from ..layers import Context, LayerRule, factored, owner_names, registry_version, rule_for
from .modes import check_modes

FALLBACKS = ("auto", "error", "exact")


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
        raise InvalidArgumentError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    return fallback


_PLANS = ModelCache("plans")  # model -> {fallback: (plan_key, Plan)}
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
                       for k, p in own_parameters(m).items())
        buffers = tuple(k for k, b in own_buffers(m).items() if b is not None)
        mods.append((name, id(m), type(m), m.training, params, buffers, _settings(m)))
    return registry_version(), tuple(mods)


def clear_plans(model: nn.Module | None = None) -> None:
    """Forget cached plans (of one model, or of all)."""
    _PLANS.clear(model)


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
        _PLANS.entry(model)[fallback] = (key, _copy(pl))
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
