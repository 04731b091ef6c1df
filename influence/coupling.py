"""Batch independence, verified: a sample's output and loss must not change when the other samples change.

Per-sample influence needs per-sample losses l_i that depend on sample i alone (and the weights). BatchNorm in
train mode is refused by its mode (``capture.check_batchnorm``); any other coupling (batch-mean subtraction
``h - h.mean(0)``, in-batch negatives in the loss, attention across the batch dimension, statistics over the
batch) is found here by running the model three times without autograd: on the batch, on the batch with every
sample but the first replaced (the other samples rotated), and with every sample but the last replaced. The
first sample's output and loss in the second run, and the last sample's in the third, must equal those of the
first run (to a few units of rounding); where they do not, :class:`influence.errors.BatchCouplingError` names the
first module (in order of completion) whose output row of that sample changed, or the loss, or the code outside
any module.

Every estimator runs it once per model and input signature (``influence.verify.signature``): Ghost and LAI in the
verification capture of a new signature (``verify.verified_capture``), Exact and TracIn when they see a new
signature (:func:`check_cached`), ``theory`` through Ghost's verdict. A coupling that shows only among samples
other than the first and the last is not seen.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .batch import Batch, LossFn, call_model, output_tensor
from .errors import BatchCouplingError
from .layers.attention import unfused_attention
from .losses import per_sample_losses

_CHECKED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
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


def _permuted(batch: Batch, n: int, keep: int) -> Batch:
    """``batch`` with sample ``keep`` unchanged and every other sample j replaced by sample (j + 1) mod n: every
    tensor leaf whose leading dimension is n is indexed (others, such as [1, T] position ids, stay)."""
    idx = [keep if j == keep else (j + 1) % n for j in range(n)]
    if n == 2:  # the rotation would swap the kept sample in: replace the other one by a copy of it
        idx = [keep, keep]
    index = torch.tensor(idx)

    def pick(t: Any) -> Any:
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n:
            return t.index_select(0, index.to(t.device))
        return t
    return tree_map(pick, batch)


def _rows(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str,
          rows: list[int]) -> dict[int, tuple[list, Tensor, Any]]:
    """For each of ``rows``: ([(module name, its output row)] in order of completion, model output row, loss of
    the row), from one forward without autograd."""
    seen: list[tuple[str, Tensor]] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None and not t.is_nested and t.dim() > 0 and t.shape[0] == n:
                seen.append((name, t.detach()[rows].clone()))
        return record

    try:
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_hook(hook(name)))
        with torch.no_grad(), unfused_attention():  # the paths the capture runs (no nested-tensor fast path)
            f = output_tensor(call_model(model, batch[0]))
            losses = per_sample_losses(loss_fn, f, batch[1], n, where)
    finally:
        for h in handles:
            h.remove()
    batched = f.dim() > 0 and f.shape[0] == n
    return {row: ([(name, t[k]) for name, t in seen], f[row] if batched else f, losses[row])
            for k, row in enumerate(rows)}


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not (a.is_floating_point() or a.is_complex()):
        return bool(torch.equal(a, b))
    scale = float(a.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
    tol = TOL_EPS * torch.finfo(a.dtype).eps * max(scale, 1.0)
    return bool(torch.allclose(a, b, rtol=0.0, atol=tol, equal_nan=True))


def check_independent(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str) -> None:
    """Raise ``BatchCouplingError`` when sample 0's or sample n - 1's output or loss depends on the other samples
    of ``batch`` (see the module docstring). Batches of one sample pass."""
    if n < 2:
        return
    RUNS[0] += 1
    rows = sorted({0, n - 1})
    base = _rows(model, loss_fn, batch, n, where, rows)
    for row in rows:
        mods, f, loss = _rows(model, loss_fn, _permuted(batch, n, row), n, where, [row])[row]
        b_mods, b_f, b_loss = base[row]
        if _same(f, b_f) and _same(loss, b_loss):
            continue
        where_it = "the loss function (the model outputs do not depend on the other samples)"
        if not _same(f, b_f):
            where_it = "code outside any module (no module's output row changed)"
            for (name, a), (name_b, b) in zip(b_mods, mods):
                if name != name_b or not _same(a, b):
                    where_it = (f"the output of module {name!r} ({type(model.get_submodule(name)).__name__}: in it, or "
                                "in the code that computes its input)")
                    break
        raise BatchCouplingError(
            f"the {where} batch: sample {row}'s {'output' if not _same(f, b_f) else 'loss'} changes when the other "
            f"samples change, so per-sample gradients (and influence) are undefined; the coupling first shows in "
            f"{where_it}. Make every sample's computation independent of the others (no statistics over the batch "
            "dimension, no in-batch negatives), or score samples one at a time.")


def check_cached(model: nn.Module, loss_fn: LossFn, batch: Batch, n: int, where: str) -> None:
    """``check_independent`` once per model and input signature (``influence.verify.signature``)."""
    from .verify import signature
    sig = signature(model, batch)
    done = _CHECKED.setdefault(model, set())
    if sig in done:
        return
    check_independent(model, loss_fn, batch, n, where)
    done.add(sig)


def clear(model: nn.Module | None = None) -> None:
    """Forget which signatures were checked (of one model, or of all)."""
    if model is None:
        _CHECKED.clear()
    else:
        _CHECKED.pop(model, None)
