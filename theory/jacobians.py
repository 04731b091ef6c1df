"""Per-sample output-to-layer Jacobians J^l_i = d f_i / d s^l_i with ``torch.func``.

A forward hook adds a zero perturbation delta_l to the output s^l of every requested layer; ``jacrev`` of the
flattened model output with respect to the deltas gives every J^l of one sample in one reverse sweep per output
coordinate, and ``vmap`` runs that over the samples of the batch (each sample is fed as a batch of one).

Shapes: f_i has F = numel(f_i) entries (F = T*C for a sequence output [T, C]); ``jacobians(...)[name]`` is
[n, F, *s_shape] where s_shape is the layer output of one sample without its batch dimension.

Assumptions: the model treats the samples of a batch independently (eval mode, no BatchNorm in train mode,
no dropout), so the Jacobian of sample i fed alone equals its block of the batched Jacobian; every requested
module runs exactly once per forward (a reused module would receive one delta per call).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from influence.batch import call_model, output_tensor
from influence.compat import tree_map
from influence.errors import TheoryScopeError


@contextmanager
def perturbed(modules: dict[str, nn.Module], deltas: dict[str, Tensor]) -> Iterator[None]:
    """Inside the block, module ``name`` returns its output plus ``deltas[name]``."""
    handles = []
    for name, module in modules.items():
        def hook(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> Tensor:
            return out + deltas[name]
        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run batched small-matrix LAPACK calls on one thread: they gain nothing from intra-op threads, and on a
    busy CPU the threaded path of batched eigen/SVD solvers was measured to be hundreds of times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def output_shapes(model: nn.Module, inputs: Any, modules: dict[str, nn.Module]) -> dict[str, torch.Size]:
    """Output shape of every module for a batch of one (the first sample); raises if a module runs twice."""
    shapes: dict[str, torch.Size] = {}
    calls: dict[str, int] = {name: 0 for name in modules}

    def record(name: str):
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            calls[name] += 1
            shapes[name] = out.shape
        return hook

    one = tree_map(lambda t: t[:1] if isinstance(t, Tensor) else t, inputs)
    handles = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            call_model(model, one)
    finally:
        for h in handles:
            h.remove()
    reused = [name for name, c in calls.items() if c > 1]
    if reused:
        raise TheoryScopeError(f"theory: modules {reused} run more than once per forward pass; the per-layer "
                                  "Jacobian J^l is defined for a layer with one call (untie or unroll them)")
    return {name: shapes[name] for name in modules if name in shapes}


def jacobians(model: nn.Module, inputs: Any, modules: dict[str, nn.Module],
              chunk_size: int | None = None) -> dict[str, Tensor]:
    """J^l_i = d f_i / d s^l_i for every module in ``modules`` and every sample: {name: [n, F, *s_shape]}.

    ``inputs``: batch-first tensor, tuple or dict (as in ``influence``). Runs under ``no_grad`` for the
    parameters (only the deltas are differentiated). ``chunk_size`` bounds how many samples vmap holds at once.
    """
    shapes = output_shapes(model, inputs, modules)
    used = {name: modules[name] for name in shapes}
    ref = next(iter(model.parameters()))

    def one_sample(x: Any) -> dict[str, Tensor]:
        x1 = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, x)

        def f_of(deltas: dict[str, Tensor]) -> Tensor:
            with perturbed(used, deltas):
                return output_tensor(call_model(model, x1)).reshape(-1)

        zeros = {name: torch.zeros(shape, dtype=ref.dtype, device=ref.device) for name, shape in shapes.items()}
        jac = jacrev(f_of)(zeros)
        return {name: j.reshape(j.shape[0], *shapes[name][1:]) for name, j in jac.items()}

    try:
        with torch.no_grad():
            return vmap(one_sample, chunk_size=chunk_size)(inputs)
    except TheoryScopeError:
        raise
    except Exception as e:  # torch.func cannot run the model (a custom autograd.Function without setup_context, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise TheoryScopeError(f"theory: torch.func cannot compute the per-sample Jacobians of "
                               f"{type(model).__name__} ({type(e).__name__}: {first}); the decomposition and the "
                               "data bound need them (influence's estimators do not)") from e
