"""Adversarial models for ``tests/test_adversarial.py``, part 1: the ``Setup``/``Case`` records, data helpers,
weights used outside their module, and layers whose leading dimension is not the batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

import influence

LR, TOL = 0.1, 1e-8
CE, MSE = influence.cross_entropy, influence.mse
EXACT = None  # expectation: the exact number


@dataclass
class Setup:
    model: nn.Module
    loss_fn: Any
    train: Any
    ref: Any
    kwargs: dict = field(default_factory=dict)  # extra estimator arguments (lr, chunk_size, params, ...)
    head: list[str] | None = None  # parameter names LAI's last layer is exact on


@dataclass
class Case:
    name: str
    build: Callable[[], Setup]
    expect: dict[str, type[Exception] | None]  # estimator -> EXACT or the named error


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def labels(n: int, k: int, seed: int = 1, *shape: int) -> torch.Tensor:
    return torch.randint(0, k, (n, *shape), generator=gen(seed))


def split(x: Any, y: torch.Tensor, n_train: int) -> tuple[Any, Any]:
    from influence.batch import take
    return take((x, y), slice(0, n_train)), take((x, y), slice(n_train, None))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = gen(seed)
    module = module.double()
    for p in module.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module.eval()


def mlp_setup(model: nn.Module, n: int = 6, d: int = 4, k: int = 3, n_train: int = 4, **kwargs: Any) -> Setup:
    """Inputs [n, d], labels of k classes; ``head`` defaults to the parameters of a submodule named ``head``."""
    x, y = randn(n, d), labels(n, k)
    train, ref = split(x, y, n_train)
    head = [f"head.{p}" for p, _ in model.head.named_parameters()] if isinstance(getattr(model, "head", None),
                                                                             nn.Module) else None
    return Setup(seeded(model), CE, train, ref, kwargs, head)


def plain_mlp(**kwargs: Any) -> Setup:
    s = mlp_setup(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), **kwargs)
    s.head = ["2.weight", "2.bias"]
    return s


# ---------------------------------------------------------------- models: weights used outside their module


class LinearOutside(nn.Module):
    """F.linear(h, self.a.weight): the weight of ``a`` is used without calling ``a``, besides a's own call."""

    def __init__(self, transpose: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.transpose = transpose

    def forward(self, x):
        h = torch.tanh(self.a(x))
        w = self.a.weight.T if self.transpose else self.a.weight
        return self.head(torch.tanh(F.linear(h, w) + self.b(h)))


class HeadFromEmbedding(nn.Module):
    """Output head written ``h @ self.emb.weight.T`` (tied, but not through a Linear module)."""

    def __init__(self, v: int = 9, d: int = 5) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(v, d), nn.Linear(d, d)

    def forward(self, ids):
        return torch.tanh(self.fc(self.emb(ids))) @ self.emb.weight.T


class TiedHead(nn.Module):
    """nanoGPT-style tying: ``head.weight = emb.weight``."""

    def __init__(self, v: int = 9, d: int = 5) -> None:
        super().__init__()
        self.emb, self.fc, self.head = nn.Embedding(v, d), nn.Linear(d, d), nn.Linear(d, v, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.emb(ids))))


def tokens(n: int, t: int, v: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, v, (n, t), generator=gen(seed))


def token_setup(model: nn.Module, n_train: int = 4, n_ref: int = 3, t: int = 5, v: int = 9, **kw: Any) -> Setup:
    n = n_train + n_ref
    ids, y = tokens(n, t, v), tokens(n, t, v, seed=3)
    train, ref = split(ids, y, n_train)
    return Setup(seeded(model), CE, train, ref, kw)


class MHA(nn.Module):
    def __init__(self, freeze_in: bool) -> None:
        super().__init__()
        self.inp, self.att, self.head = nn.Linear(4, 6), nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(6, 3)
        self.freeze_in = freeze_in

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(self.att(h, h, h, need_weights=False)[0])


def mha_setup(freeze_in: bool) -> Setup:
    model = seeded(MHA(freeze_in))
    if freeze_in:
        model.att.in_proj_weight.requires_grad_(False)
        model.att.in_proj_bias.requires_grad_(False)
    x, y = randn(7, 5, 4), labels(7, 3, 1, 5)
    train, ref = split(x, y, 4)
    return Setup(model, CE, train, ref, head=["head.weight", "head.bias"])


# ---------------------------------------------------------------- models: leading dimension not the batch


class NanoPositions(nn.Module):
    """Position embedding on ``torch.arange(T)`` without a batch dimension, added to token embeddings."""

    def __init__(self, v: int = 9, d: int = 5, t_max: int = 8) -> None:
        super().__init__()
        self.tok, self.pos, self.fc, self.head = nn.Embedding(v, d), nn.Embedding(t_max, d), nn.Linear(d, d), \
            nn.Linear(d, v)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.head(torch.tanh(self.fc(x)))


class SeqFirst(nn.Module):
    """A Linear applied to a [T, n, d] tensor (sequence-first), then transposed back."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.inp, self.mid, self.head = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x)).transpose(0, 1)
        return self.head(torch.tanh(self.mid(h)).transpose(0, 1))


def seq_setup(model: nn.Module, n_train: int, n_ref: int, t: int) -> Setup:
    n = n_train + n_ref
    x, y = randn(n, t, 4), labels(n, 3, 1, t)
    train, ref = split(x, y, n_train)
    return Setup(seeded(model), CE, train, ref, head=["head.weight", "head.bias"])


class FlatTokens(nn.Module):
    """OPT-style MLP on flattened tokens: [n, T, d] -> [n*T, d] -> Linear -> back."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.inp, self.mid, self.head = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        n, t, d = x.shape
        h = torch.tanh(self.inp(x)).reshape(n * t, d)
        return self.head(torch.tanh(self.mid(h)).view(n, t, d))


class MaskPositions(nn.Embedding):
    """An ``nn.Embedding`` subclass whose ``forward`` builds its ids from the attention mask (as OPT does)."""

    def forward(self, mask):
        return super().forward((mask.cumsum(1) - 1).clamp(min=0) * mask + 1)


class WithMaskPositions(nn.Module):
    def __init__(self, v: int = 9, d: int = 5) -> None:
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(v, d), MaskPositions(10, d), nn.Linear(d, v)

    def forward(self, ids, mask):
        return self.head(torch.tanh(self.tok(ids) + self.pos(mask)))


def mask_positions_setup() -> Setup:
    n, t = 7, 5
    ids, y = tokens(n, t), tokens(n, t, seed=3)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, :2] = 0
    mask[4, :3] = 0
    train, ref = split((ids, mask), y, 4)
    return Setup(seeded(WithMaskPositions()), CE, train, ref, head=["head.weight", "head.bias"])
