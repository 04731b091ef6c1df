"""Batch independence, verified: a sample's output and loss must not change when the other samples change.

Per-sample influence needs per-sample losses l_i that depend on sample i alone (and the weights). BatchNorm in
train mode is refused by its mode (``capture.check_batchnorm``); any other coupling (batch-mean subtraction
``h - h.mean(0)``, in-batch negatives in the loss, attention across the batch dimension, statistics over the
batch) is found here by running the model once more without autograd on the batch with every sample but the first
and the last replaced (for n = 2: twice, each run keeping one of the two samples and replacing the other): the
kept samples' outputs and losses must equal those of the batch itself (to ``TOL_EPS`` units of rounding). Where
they do not, :class:`influence.errors.BatchCouplingError` names the first module (in order of completion) whose
output rows of those samples changed (two more forwards with module hooks, on the error path only), or the loss,
or code outside any module.

Every estimator runs it once per model and input signature (``influence.verify.signature``): Ghost and LAI in the
verification capture of a new signature (``verify.verified_capture``), Exact and TracIn when they see a new
signature (:func:`check_cached`), ``theory`` through Ghost's verdict; the verification passes the capture's own
outputs and losses as the unperturbed run. A coupling that reaches neither the first nor the last sample is not
seen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, LossFn, call_model, output_tensor
from .caches import ModelCache
from .compat import tree_flatten, tree_map, tree_unflatten
from .errors import BatchCouplingError
from .layers import capture_context
from .losses import per_sample_losses

_CHECKED = ModelCache("coupling checks", set)  # model -> signatures checked
RUNS = [0]  # number of checks run (observable by tests)
TOL_EPS = 64  # allowed difference in units of eps of the compared tensor's dtype, relative to its largest entry


def _first_tensor(out: Any) -> Tensor | None:
    """The first tensor of a module output (itself, or the first leaf of a tuple, list or dict)."""
    stack = [out]
    while stack:
        x = stack.pop(0)
        if isinstance(x, Tensor):
            return x
        if isinstance(x, (tuple, list)):
            stack = list(x) + stack
        elif isinstance(x, dict):
            stack = list(x.values()) + stack
    return None


def _perturbations(n: int) -> list[tuple[list[int], list[int]]]:
    """(sample index of every row, the rows kept unchanged) of each perturbed batch: for n >= 3 one batch whose first
    and last samples stay and whose others are replaced (sample j by sample j + 1); for n = 2 two batches, each
    keeping one sample and replacing the other by a copy of it."""
    if n == 2:
        return [([0, 0], [0]), ([1, 1], [1])]
    return [([0] + [j + 1 for j in range(1, n - 1)] + [n - 1], [0, n - 1])]


def _permuted(batch: Batch, n: int, idx: list[int]) -> Batch:
    """``batch`` with row j replaced by sample ``idx[j]`` in every tensor leaf whose leading dimension is n (others,
    such as [1, T] position ids, stay). A replaced row whose inputs come out unchanged (duplicate samples, a batch
    of copies) is changed in one input leaf so that the check still sees other data: the first floating leaf gets
    0.5 (|x| + 1) added, or else the first integer leaf's values become 0 where nonzero and 1 where zero (valid
    indices of any table of two or more rows), or else a boolean leaf is negated."""
    index = torch.tensor(idx)

    def pick(t: Any) -> Any:
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n:
            return t.index_select(0, index.to(t.device))
        return t
    out = tree_map(pick, batch)
    kept = [j for j in range(n) if idx[j] == j]
    leaves, spec = tree_flatten(out[0])
    old = tree_flatten(batch[0])[0]
    rows = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n]
    if not rows:
        return out
    same = torch.ones(n, dtype=torch.bool)
    for i in rows:
        same &= (leaves[i] == old[i]).reshape(n, -1).all(1).cpu()
    same[kept] = False
    if not bool(same.any()):
        return out
    order = sorted(rows, key=lambda i: (not leaves[i].is_floating_point(), leaves[i].dtype == torch.bool))
    t = leaves[order[0]].clone()
    r = same.nonzero().flatten().to(t.device)
    if t.is_floating_point() or t.is_complex():
        t[r] = t[r] + 0.5 * (t[r].abs() + 1)
    elif t.dtype == torch.bool:
        t[r] = ~t[r]
    else:
        t[r] = (t[r] == 0).to(t.dtype)
    leaves[order[0]] = t
    return (tree_unflatten(leaves, spec), *out[1:])


def _run(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str,
         hooks: bool = False) -> tuple[list[tuple[str, Tensor]], Tensor, Tensor]:
    """(with ``hooks``: [(module name, its output [n, ...])] in order of completion, else []; the model output f;
    the per-sample losses [n]), from one forward without autograd through the paths the capture runs."""
    seen: list[tuple[str, Tensor]] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None and not t.is_nested and t.dim() > 0 and t.shape[0] == n:
                seen.append((name, t.detach()))
        return record

    try:
        if hooks:
            for name, m in model.named_modules():
                if name:
                    handles.append(m.register_forward_hook(hook(name)))
        with torch.no_grad(), capture_context():  # no nested-tensor fast path (the capture's paths)
            f = output_tensor(call_model(model, batch[0]))
            losses = per_sample_losses(loss_fn, f, batch[1], n, where)
    finally:
        for h in handles:
            h.remove()
    return seen, f, losses


def _rows(t: Tensor, rows: list[int], n: int) -> Tensor:
    return t[rows] if t.dim() > 0 and t.shape[0] == n else t


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not (a.is_floating_point() or a.is_complex()):
        return bool(torch.equal(a, b))
    scale = float(a.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
    tol = TOL_EPS * torch.finfo(a.dtype).eps * max(scale, 1.0)
    return bool(torch.allclose(a, b, rtol=0.0, atol=tol, equal_nan=True))


def check_independent(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str,
                      base: tuple[Tensor, Tensor] | None = None) -> None:
    """Raise ``BatchCouplingError`` when the first or the last sample's output or loss depends on the other samples
    of ``batch`` (see the module docstring). ``base``: (f, losses) of ``batch`` already computed by a forward
    that computes what the model computes (a capture's); one is run otherwise. Costs one forward without autograd
    (two for n = 2) besides ``base``; when a coupling is found, two more with module hooks name where it first
    shows. Batches of one sample pass."""
    if n < 2:
        return
    RUNS[0] += 1
    f0, l0 = base if base is not None else _run(model, loss_fn, batch, n, where)[1:]
    for idx, kept in _perturbations(n):
        _, f, losses = _run(model, loss_fn, _permuted(batch, n, idx), n, where)
        out_same = _same(_rows(f, kept, n), _rows(f0.detach(), kept, n))
        if out_same and _same(losses[kept], l0.detach()[kept]):
            continue
        raise BatchCouplingError(
            f"the {where} batch: the {'loss' if out_same else 'output'} of "
            f"{'samples 0 and ' + str(kept[1]) if len(kept) == 2 else 'sample ' + str(kept[0])} changes when the other samples change, so per-sample gradients (and "
            f"influence) are undefined; the coupling first shows in "
            f"{'the loss function (the outputs do not change)' if out_same else _where(model, loss_fn, batch, n, where, idx, kept)}"
            ". Make every sample's computation independent of the others (no statistics over the batch dimension, "
            "no in-batch negatives), or score samples one at a time.")


def _where(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str, idx: list[int],
           kept: list[int]) -> str:
    """The first module (in order of completion) whose output rows ``kept`` differ between ``batch`` and its
    perturbation ``idx``, in words."""
    mods, _, _ = _run(model, loss_fn, batch, n, where, hooks=True)
    other, _, _ = _run(model, loss_fn, _permuted(batch, n, idx), n, where, hooks=True)
    for (name, a), (name_b, b) in zip(mods, other):
        if name != name_b or not _same(a[kept], b[kept]):
            return (f"the output of module {name!r} ({type(model.get_submodule(name)).__name__}: in it, or in the "
                    "code that computes its input)")
    return "code outside any module (no module's output row changed)"


def check_cached(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str) -> None:
    """``check_independent`` once per model and input signature (``influence.verify.signature``)."""
    from .verify import signature
    sig = signature(model, batch)
    done = _CHECKED.entry(model)
    if sig in done:
        return
    check_independent(model, loss_fn, batch, n, where)
    done.add(sig)


def clear(model: nn.Module | None = None) -> None:
    """Forget which signatures were checked (of one model, or of all)."""
    _CHECKED.clear(model)
