"""Modes that make per-sample influence undefined, refused before anything is recorded: BatchNorm in train mode (or
without running statistics) and stochastic modules (Dropout and the like) in train mode."""

from __future__ import annotations

from torch import nn

from ..compat import BATCHNORM, DROPOUT
from ..errors import StochasticModuleError, TrainModeBatchNormError, UndefinedGradientError

STOCHASTIC = (DROPOUT, nn.RReLU, nn.MultiheadAttention)


def check_batchnorm(model: nn.Module) -> None:
    """Refuse BatchNorm in train mode, or without running statistics (batch statistics in eval mode too, trainable
    or frozen): it couples the samples of a batch, so per-sample influence is undefined."""
    for name, m in model.named_modules():
        if isinstance(m, BATCHNORM) and m.training:
            raise TrainModeBatchNormError(
                f"{name or 'model'}: {type(m).__name__} is in train mode; it couples the samples of a batch so "
                "per-sample influence is undefined. Call model.eval() (or put the BatchNorm layers in eval mode) "
                "before scoring.")
        if isinstance(m, BATCHNORM) and (m.running_mean is None or m.running_var is None):
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
