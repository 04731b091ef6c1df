"""The recorder: one pass over a batch that records every planned layer's inputs (and output gradients).

``capture_forward`` records layer inputs under ``no_grad`` (LAI); ``capture_backward`` also reads every
recorded layer output's gradient with one ``autograd.grad`` call that never writes ``.grad`` (Ghost, theory),
optionally with autograd's batch gradient of some parameters and per-sample gradients of a few samples
(the verification in ``influence.verify``; given the plan's factoring, only of the parameters whose autograd paths
the recorded calls do not explain: ``_unexplained``, ``influence.paths``). Contexts the layer rules need around a
pass (attention's unfused path) come from the registry (``influence.layers.capture_context``); this module names no
rule.

Every recorded call must have the batch as the leading dimension of its input and output: a leading 1 on both
(position ids built with shape [1, T] and broadcast) is read as one call serving every sample, and for rules with
``fold_tokens`` a leading k * n on both is read as [n, k, ...] (flattened tokens, confirmed by the verification).
Any other call is listed in ``Capture.bad`` and its module's parameters are not factored.

Recording never changes what the model computes: the recorder returns the module's own output (or, for rules
with ``protect_output``, a copy of it with equal values). What a rule needs in another layout is kept on the side:
a shared call's input expanded to n; its per-sample output gradients are read in the backward at the operations
that broadcast the output against the batch (``capture.broadcast``: additions, subtractions, ``expand``),
and a shared call whose output is used any other way (reduced over its leading dimension, multiplied, ...) is
listed in ``Capture.bad``.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..batch import LossFn, call_model, output_tensor
from ..checks import check_loss_fn
from ..compat import shadow_forward, version
from ..errors import InPlaceModificationError, named_checkpointing_errors
from ..layers import LayerRule, capture_context, rule_for
from ..losses import output_gradient, per_sample_losses
from ..paths import input_nodes, unexplained
from .broadcast import _broadcast_gradients
from .calls import Call, Capture
from .factorise import dense_grad
from .planning import Factoring


def _each(x: Tensor | tuple[Tensor, ...], f: Any) -> Any:
    """``f`` of a recorded input, or of each of its tensors when a rule records several."""
    return tuple(f(t) for t in x) if isinstance(x, tuple) else f(x)


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
                versions, inp = (version(x), version(output)), _kept(x)
            else:
                versions, inp = (tuple(version(t) for t in x), version(output)), tuple(_kept(t) for t in x)
            self.calls[name].append(Call(inp, out, versions, weakref.ref(output), fold, shared))
            if self.track_inputs:
                self.inputs[name].append(input_nodes(args, kwargs))
            if self.keep_output and replaced is None and getattr(rule, "protect_output", False):
                replaced = output.clone()  # in-place ops downstream (x += residual, ReLU(inplace)) modify the copy
                if shared:  # the copy is what the model broadcasts: read its per-sample gradients there
                    last = self.calls[name][-1]
                    last.out, last.versions = replaced, (last.versions[0], version(replaced))
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
                out_v = version(c.out) if c.out is not None else c.versions[1]
                if (_each(c.inp, version), out_v) != c.versions:
                    raise InPlaceModificationError(
                        f"{name}: its input or output was modified in place after the layer ran (e.g. "
                        "ReLU(inplace=True) or `x += ...`); per-layer factors would be wrong. Use out-of-place ops.")


def _kept(t: Tensor) -> Tensor:
    """A recorded input as kept: detached from autograd (a tensor outside autograd as it is: detaching it would
    only make an alias)."""
    return t.detach() if t.requires_grad else t




def _shadow_forward(module: nn.Module, record: Any) -> Any:
    """Set ``module.forward`` (an instance attribute) to a function that calls the current ``forward`` and then
    ``record(module, args, kwargs, output)``, returning what ``record`` returns unless None (then the output);
    returns the function that restores the instance attribute as it was (``compat.shadow_forward``)."""
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        output = inner(*args, **kwargs)
        replaced = record(module, args, kwargs, output)
        return output if replaced is None else replaced

    return shadow_forward(module, forward)


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
    with torch.set_grad_enabled(keep_graph), capture_context(), Recorder(modules, n, False, rules) as rec:
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
    weighted comparison subsumes the sum check, and the first pass computes no weight gradient). ``rules``: as in
    ``capture_forward``. ``paths`` (the plan's ``factoring()``): first check ``params`` on the forward's graph
    (``influence.paths``) and take autograd's gradient only of those whose paths the layer calls do not explain,
    with every parameter of their layers (``Capture.param_grads`` holds those; none when the graph explains every
    path)."""
    x, y = batch
    check_loss_fn(loss_fn)
    params = list(params)
    with torch.enable_grad(), capture_context(), \
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
