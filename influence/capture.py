"""Which layers to score, and hooks that record their inputs (and output gradients) in one pass.

``plan`` checks the model once: BatchNorm in train mode, trainable layers the fast path does not support,
parameters shared between modules. ``capture_forward`` records layer inputs under ``no_grad`` (LAI);
``capture_backward`` also reads every recorded layer output's gradient with one ``autograd.grad`` call that
stops at the earliest recorded layer and never writes ``.grad`` of any parameter (Ghost, theory).

Layers whose input has batch size 1 while the batch has n > 1 samples (position ids built with shape
[1, T] and broadcast) are expanded to n in the hook, so each sample gets its own output gradient.
Inputs must be batch-first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .batch import LossFn, call_model, output_tensor
from .errors import InPlaceModificationError, SharedParameterError, TrainModeBatchNormError, UnsupportedLayerError
from .layers import (OUTER_TYPES, SUPPORTED_TYPES, GhostPiece, check_supported, ghost_pieces, make_block,
                     owner_names)
from .factors import Block
from .losses import output_gradient, per_sample_losses


def check_batchnorm(model: nn.Module) -> None:
    """Refuse BatchNorm in train mode: it couples the samples of a batch, so per-sample influence is undefined."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise TrainModeBatchNormError(
                f"{name or 'model'}: {type(m).__name__} is in train mode; it couples the samples of a batch so "
                "per-sample influence is undefined. Call model.eval() (or put the BatchNorm layers in eval mode) "
                "before scoring.")


@dataclass
class Plan:
    """The trainable layers of a model, split into those the fast path factorises and the rest."""

    modules: dict[str, nn.Module]
    unsupported: dict[str, nn.Module]
    shared: set[int]
    owners: dict[int, str]

    def unsupported_params(self) -> list[str]:
        return [f"{name}.{p}" if name else p for name, m in self.unsupported.items()
                for p, t in m.named_parameters(recurse=False) if t.requires_grad]


def plan(model: nn.Module, fallback: str | None = None) -> Plan:
    """Check ``model`` and list the layers to capture. ``fallback='exact'`` accepts unsupported layers
    (their parameters are then scored with torch.func)."""
    if fallback not in (None, "exact"):
        raise ValueError(f"fallback must be None or 'exact', got {fallback!r}")
    check_batchnorm(model)
    modules, unsupported = {}, {}
    users: dict[int, list[str]] = defaultdict(list)
    for name, m in model.named_modules():
        direct = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not direct:
            continue
        for p in direct:
            users[id(p)].append(name)
        if isinstance(m, SUPPORTED_TYPES):
            check_supported(name or type(m).__name__, m)
            modules[name] = m
        else:
            unsupported[name] = m
    shared = {pid for pid, names in users.items() if len(names) > 1}
    for pid in shared:
        names = users[pid]
        if any(n in unsupported for n in names) or not all(isinstance(modules[n], OUTER_TYPES) for n in names):
            raise SharedParameterError(
                f"a parameter is shared by modules {names}; the fast path handles sharing only between Linear, "
                "Conv and Embedding layers. Untie the parameter or use influence.exact")
    if unsupported and fallback != "exact":
        listing = ", ".join(f"{n or 'model'} ({type(m).__name__})" for n, m in unsupported.items())
        raise UnsupportedLayerError(
            f"trainable layers without a fast-path factorisation: {listing}. Supported: "
            f"{', '.join(t.__name__ for t in SUPPORTED_TYPES)}. Pass fallback='exact' to score their parameters "
            "with per-sample gradients from torch.func, or freeze them (requires_grad=False).")
    return Plan(modules, unsupported, shared, owner_names(model))


@dataclass
class Call:
    inp: Tensor
    out: Tensor | None
    versions: tuple[int, int]
    out_ptr: int = 0  # storage address of the layer output, to recognise it as the model output


@dataclass
class Capture:
    """What one pass over a batch recorded.

    ``calls[name]``: one entry per call of the layer (input [n, ...], output gradient [n, ...] after
    ``capture_backward``); ``order``: layer names in order of first call; ``f``: model output [n, ...];
    ``g``: dl_i/df_i, same shape; ``losses``: [n]."""

    calls: dict[str, list[Call]]
    order: list[str]
    f: Tensor
    g: Tensor
    losses: Tensor
    grads: dict[str, list[Tensor]] = field(default_factory=dict)


class Recorder:
    """Forward hooks on ``modules`` recording each call's input (and output, when ``keep_output``)."""

    def __init__(self, modules: dict[str, nn.Module], n: int, keep_output: bool) -> None:
        self.modules, self.n, self.keep_output = modules, n, keep_output
        self.calls: dict[str, list[Call]] = defaultdict(list)
        self.order: list[str] = []
        self.handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor):
            x = args[0]
            replaced = None
            if self.n > 1 and x.shape[0] == 1 and output.shape[0] == 1:
                x = x.expand(self.n, *x.shape[1:])
                if self.keep_output:
                    replaced = output = output.expand(self.n, *output.shape[1:])
            if name not in self.calls:
                self.order.append(name)
            out = output if self.keep_output else None
            self.calls[name].append(Call(x.detach(), out, (x._version, output._version), output.data_ptr()))
            return replaced
        return hook

    def __enter__(self) -> "Recorder":
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def check_versions(self) -> None:
        for name, calls in self.calls.items():
            for c in calls:
                out_v = c.out._version if c.out is not None else c.versions[1]
                if (c.inp._version, out_v) != c.versions:
                    raise InPlaceModificationError(
                        f"{name}: its input or output was modified in place after the layer ran (e.g. "
                        "ReLU(inplace=True) or `x += ...`); per-layer factors would be wrong. Use out-of-place ops.")


def capture_forward(model: nn.Module, loss_fn: LossFn, batch: tuple[Any, Any], modules: dict[str, nn.Module],
                    n: int, where: str) -> Capture:
    """Forward pass without autograd through the network: layer inputs, f, g (from the outputs) and losses."""
    x, y = batch
    with torch.no_grad(), Recorder(modules, n, keep_output=False) as rec:
        f = output_tensor(call_model(model, x))
    losses, g = output_gradient(loss_fn, f, y, where)
    return Capture(dict(rec.calls), rec.order, f.detach(), g, losses)


def capture_backward(model: nn.Module, loss_fn: LossFn, batch: tuple[Any, Any], modules: dict[str, nn.Module],
                     n: int, where: str) -> Capture:
    """Forward and one truncated backward of sum_i l_i: inputs and output gradients of every layer."""
    x, y = batch
    with torch.enable_grad(), Recorder(modules, n, keep_output=True) as rec:
        f = output_tensor(call_model(model, x))
        losses = per_sample_losses(loss_fn, f, y, n, where)
        rec.check_versions()
        names = [name for name in rec.order for _ in rec.calls[name]]
        outs = [c.out for name in rec.order for c in rec.calls[name]]
        wanted = [o for o in outs if o.requires_grad]
        got = torch.autograd.grad(losses.sum(), wanted + ([f] if f.requires_grad else []), allow_unused=True)
    got_iter = iter(got)
    grads: dict[str, list[Tensor]] = defaultdict(list)
    for name, o in zip(names, outs):
        gr = next(got_iter) if o.requires_grad else None
        grads[name].append(torch.zeros_like(o) if gr is None else gr)
    g = next(got_iter, None) if f.requires_grad else None
    g = torch.zeros_like(f) if g is None else g
    calls = {k: [Call(c.inp, None, c.versions, c.out_ptr) for c in v] for k, v in rec.calls.items()}
    return Capture(calls, rec.order, f.detach(), g, losses.detach(), dict(grads))


def ghost_blocks(cap: Capture, pl: Plan) -> dict[tuple[int, ...], Block]:
    """Exact per-sample gradient factorisation of every captured parameter block, merged across calls and
    across modules that share a parameter."""
    pieces: dict[tuple[int, ...], list[GhostPiece]] = defaultdict(list)
    params: dict[tuple[int, ...], tuple] = {}
    for name in cap.order:
        module = pl.modules[name]
        for call, grad in zip(cap.calls[name], cap.grads[name]):
            for pc in ghost_pieces(module, call.inp, grad, pl.shared):
                key = tuple(id(p) for p in pc.params)
                pieces[key].append(pc)
                params[key] = pc.params
    blocks = {}
    for key, pcs in pieces.items():
        dims = {(s.left.dim, s.right.dim, s.left.groups) for s in (pc.segment for pc in pcs)}
        if len(dims) > 1:
            raise SharedParameterError(f"{pl.owners[key[0]]}: modules sharing this parameter use it with different "
                                       f"orientations {sorted(dims)}; untie it or use influence.exact")
        blocks[key] = make_block(params[key], pcs, pl.owners)
    return blocks
