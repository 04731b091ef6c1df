"""The global modes estimators run outside of, and the eager module under training wrappers.

``scoring_mode`` switches off, while an estimator runs, the caller's modes that would change what it computes
(autocast, inference mode, cached parametrizations); ``unwrapped`` finds the module that DataParallel, DDP and
``torch.compile`` wrap.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .compat import compiled_inner, parametrization_cache_depth, uncached_parametrizations


def scoring_mode(method: Callable) -> Callable:
    """Run ``method`` outside the global modes of the caller's code that would change what an estimator computes:
    ``torch.autocast`` is switched off (estimators compute in the parameters' dtype: autocast would run layers in
    another dtype than the factors they record; to score in lower precision, convert the model), so is
    ``torch.inference_mode`` (Ghost's backward needs autograd; inference-tensor batches are copied by
    ``without_inference_tensors``) and ``torch.nn.utils.parametrize.cached()`` (``uncached_parametrizations``)."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        autocast = [device for device in AUTOCAST_DEVICES if torch.is_autocast_enabled(device)]
        inference = torch.is_inference_mode_enabled()
        if not (autocast or inference or parametrization_cache_depth()):
            return method(*args, **kwargs)  # nothing to switch off (the common case, without the context stack)
        with contextlib.ExitStack() as stack:
            for device in autocast:
                stack.enter_context(torch.autocast(device, enabled=False))
            if inference:
                stack.enter_context(torch.inference_mode(False))
            stack.enter_context(uncached_parametrizations())
            return method(*args, **kwargs)
    return wrapper


AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def unwrapped(model: nn.Module) -> nn.Module:
    """The eager module under training wrappers that compute the same function: ``nn.DataParallel`` and
    ``DistributedDataParallel`` (``.module``: their forward would scatter or synchronise gradients, and
    ``functional_call`` refuses them) and ``torch.compile`` (``compat.compiled_inner``: compiled code runs no module
    hooks). Parameter names are the inner module's (without the wrappers' prefixes)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif compiled_inner(model) is not None:
            model = compiled_inner(model)
        else:
            return model
