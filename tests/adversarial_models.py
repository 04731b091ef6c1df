"""Adversarial models for ``tests/test_adversarial.py``, part 2: outputs, losses and modes; parameters of other
kinds (additive, norms, recurrent, parametrized, detached); batches and arguments."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from adversarial_setup import *  # noqa: F401,F403 - Setup, data helpers, shared models
from torch import nn

import influence

# ---------------------------------------------------------------- models: outputs, losses, modes


class Transformed(nn.Module):
    """The model output is the head's output transformed further (LAI's last layer must refuse)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc, self.head, self.how = nn.Linear(4, 5), nn.Linear(5, 3), how
        self.shift = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        f = self.head(torch.tanh(self.fc(x)))
        if self.how == "double":
            return 2 * f
        if self.how == "log_softmax":
            return f.log_softmax(-1)
        if self.how == "shift":
            return f + self.shift
        return f * 1.0


class AuxLogits(nn.Module):
    """Returns ``(aux, logits)``: the first element is not what the loss takes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return h, self.head(h)


def aux_setup(select: Any = None) -> Setup:
    s = mlp_setup(AuxLogits())
    if select is not None:
        influence.select_output(s.model, select)
    s.head = ["head.weight", "head.bias"]
    return s


class Regressor(nn.Module):
    def __init__(self, out: int = 1) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 5), nn.Linear(5, out)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)))


def regression_setup(out: int = 1, target_shape: tuple[int, ...] = ()) -> Setup:
    x, y = randn(6, 4), randn(6, *target_shape, seed=5)
    train, ref = split(x, y, 4)
    return Setup(seeded(Regressor(out)), MSE, train, ref, head=["head.weight", "head.bias"])


def soft_setup(tokens_dim: bool = False) -> Setup:
    s = plain_mlp() if not tokens_dim else seq_setup(SeqFirst(), 4, 3, 5)
    for batch_name in ("train", "ref"):
        x, y = getattr(s, batch_name)
        k = 3
        soft = torch.softmax(randn(*y.shape, k, seed=y.numel()), -1)
        setattr(s, batch_name, (x, soft))
    return s


class Recurrent(nn.Module):
    def __init__(self, cell: type) -> None:
        super().__init__()
        self.rnn, self.head = cell(4, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def rnn_setup(cell: type) -> Setup:
    x, y = randn(6, 5, 4), labels(6, 3)
    train, ref = split(x, y, 4)
    return Setup(seeded(Recurrent(cell)), CE, train, ref, head=["head.weight", "head.bias"])


def t5_setup() -> Setup:
    pytest.importorskip("transformers")
    import zoo
    c = zoo.case("t5")
    c.model.lm_head.weight = nn.Parameter(c.model.lm_head.weight.detach().clone())  # T5 always ties: untie
    return Setup(c.model, c.loss_fn, c.train, c.ref, head=["lm_head.weight"])


def with_mode(setup: Setup, train_mode: bool = True) -> Setup:
    setup.model.train(train_mode)
    return setup


def frozen_all() -> Setup:
    s = plain_mlp()
    for p in s.model.parameters():
        p.requires_grad_(False)
    return s


def empty(which: str) -> Setup:
    s = plain_mlp()
    x, y = getattr(s, which)
    setattr(s, which, (x[:0], y[:0]))
    return s


def nonfinite_input(value: float, where: str = "inputs") -> Setup:
    s = plain_mlp()
    x, y = s.train
    if where == "inputs":
        x = x.clone()
        x[1, 2] = value
    s.train = (x, y)
    return s


def nan_target() -> Setup:
    s = regression_setup()
    x, y = s.ref
    y = y.clone()
    y[0] = float("nan")
    s.ref = (x, y)
    return s


# ---------------------------------------------------------------- models: parameters of other kinds


class Additive(nn.Module):
    """ViT-style: a class token prepended and a position parameter added to the patch activations."""

    def __init__(self, t: int = 4, d: int = 5) -> None:
        super().__init__()
        self.patch = nn.Linear(4, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position = nn.Parameter(torch.zeros(1, t + 1, d))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 3)

    def forward(self, x):
        h = self.patch(x)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], 1) + self.position
        return self.head(torch.tanh(self.norm(h))[:, 0])


def additive_setup() -> Setup:
    x, y = randn(7, 4, 4), labels(7, 3)
    train, ref = split(x, y, 4)
    return Setup(seeded(Additive()), CE, train, ref, head=["head.weight", "head.bias"])


class Scaled(nn.Module):
    """A bare parameter used in the forward (``x * self.scale``), not owned by any layer with a rule."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 5), nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)) * self.scale)


class CustomRMSNorm(nn.Module):
    """An RMSNorm written as HF does (its own class), optionally Gemma's (1 + weight) form."""

    def __init__(self, d: int, one_plus: bool = False) -> None:
        super().__init__()
        self.weight, self.one_plus, self.eps = nn.Parameter(torch.ones(d)), one_plus, 1e-6

    def forward(self, x):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return h * ((1 + self.weight) if self.one_plus else self.weight)


def normed(norm: nn.Module, seq: bool = False) -> Setup:
    model = nn.Sequential(nn.Linear(4, 6), norm, nn.Tanh(), nn.Linear(6, 3))
    if seq:
        x, y = randn(7, 5, 4), labels(7, 3, 1, 5)
        train, ref = split(x, y, 4)
        return Setup(seeded(model), CE, train, ref, head=["3.weight", "3.bias"])
    s = mlp_setup(model)
    s.head = ["3.weight", "3.bias"]
    return s


def conv_norm(norm: nn.Module) -> Setup:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(4 * 16, 3))
    x, y = randn(6, 2, 4, 4), labels(6, 3)
    train, ref = split(x, y, 4)
    model = seeded(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(randn(4, seed=8) * 0.1)
            m.running_var.copy_(randn(4, seed=9).abs() + 0.5)
    return Setup(model.eval(), CE, train, ref, head=["4.weight", "4.bias"])


class ResidualBlock(nn.Module):
    """torchvision-style: BatchNorm output modified in place by ``+= identity`` and ``ReLU(inplace=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=True)
        self.head = nn.Linear(2 * 16, 3)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.head(self.relu(out).flatten(1))


def residual_setup() -> Setup:
    x, y = randn(6, 2, 4, 4), labels(6, 3)
    train, ref = split(x, y, 4)
    model = seeded(ResidualBlock())
    model.bn.running_var.fill_(1.3)
    return Setup(model, CE, train, ref, head=["head.weight", "head.bias"])


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class Detached(nn.Module):
    """A trainable layer whose output is detached / computed under no_grad, and one that is never used."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.unused, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.how = how

    def forward(self, x):
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.a(x)
        else:
            h = self.a(x).detach()
        return self.head(torch.tanh(self.b(h)))


class SharedBiasNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.head = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)
        self.norm.weight = self.a.bias

    def forward(self, x):
        return self.head(self.norm(self.a(x)))


class DictInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 5), nn.Linear(2, 5), nn.Linear(5, 3)

    def forward(self, x, extra):
        return self.head(torch.tanh(self.a(x) + self.b(extra)))


def dict_setup(as_dict: bool) -> Setup:
    x, e, y = randn(6, 4), randn(6, 2, seed=2), labels(6, 3)
    inputs = {"x": x, "extra": e} if as_dict else (x, e)
    train, ref = split(inputs, y, 4)
    return Setup(seeded(DictInputs()), CE, train, ref, head=["head.weight", "head.bias"])


class PaddedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(6, 4, padding_idx=0), nn.Linear(4, 6)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


def padded_embedding() -> Setup:
    ids = torch.tensor([[1, 1, 0, 2], [0, 0, 0, 3], [5, 5, 5, 5], [2, 0, 2, 0], [1, 2, 3, 4], [4, 4, 0, 0]])
    y = torch.randint(0, 6, ids.shape, generator=gen(2))
    train, ref = split(ids, y, 4)
    model = seeded(PaddedEmbedding())
    with torch.no_grad():
        model.emb.weight[0] = 0
    return Setup(model, CE, train, ref, head=["head.weight", "head.bias"])


def weight_norm_setup() -> Setup:
    from torch.nn.utils.parametrizations import weight_norm
    model = nn.Sequential(weight_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 3))
    s = mlp_setup(model)
    s.head = ["2.weight", "2.bias"]
    return s


def transposed_conv() -> Setup:
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 3))
    x, y = randn(6, 2, 2, 2), labels(6, 3)
    train, ref = split(x, y, 4)
    return Setup(seeded(model), CE, train, ref, head=["3.weight", "3.bias"])


def kw(setup: Callable[[], Setup], **kwargs: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        s = setup()
        s.kwargs.update(kwargs)
        return s
    return build


def batch_of(n_train: int, n_ref: int) -> Callable[[], Setup]:
    def build() -> Setup:
        return plain_mlp(n=n_train + n_ref, n_train=n_train)
    return build


def scalar_loss() -> Setup:
    s = plain_mlp()
    s.loss_fn = nn.CrossEntropyLoss()
    return s


def mismatched() -> Setup:
    s = plain_mlp()
    x, y = s.train
    s.train = (x, y[:3])
    return s


class NoLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return {"hidden": self.fc(x)}


def aux_setup_key() -> Setup:
    class KeyOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.fc(x))
            return {"features": h, "scores": self.head(h)}

    s = mlp_setup(KeyOut())
    influence.select_output(s.model, "scores")
    s.head = ["head.weight", "head.bias"]
    return s


def frozen_bias() -> Setup:
    s = plain_mlp()
    s.model[0].bias.requires_grad_(False)
    s.kwargs["params"] = ["0.weight", "0.bias"]
    return s


class Checkpointed(nn.Module):
    """The middle layer under activation checkpointing (``torch.utils.checkpoint``): with ``use_reentrant=False``
    its forward re-runs inside the backward (the capture must not record that as a call); with ``True`` autograd
    refuses ``torch.autograd.grad`` through it."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.reentrant = reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        h = torch.tanh(self.a(x))
        h = checkpoint(lambda t: torch.tanh(self.b(t)), h, use_reentrant=self.reentrant)
        return self.head(h)


class SparseEmbedding(nn.Module):
    """``nn.Embedding(sparse=True)``: autograd returns its gradient as a sparse tensor (the same gradient)."""

    def __init__(self, v: int = 9, d: int = 5) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(v, d, sparse=True), nn.Linear(d, v)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


def sparse_embedding_setup() -> Setup:
    s = token_setup(SparseEmbedding())
    s.head = ["head.weight", "head.bias"]
    return s


# ---------------------------------------------------------------- issue 26: recording, coupling, 0-dim, contracts


class Context(nn.Module):
    """A Linear applied to a [1, d] buffer (one call for the whole batch), its output then used as ``how``:
    ``"reduce"`` summed over its leading dimension (the capture used to return the call's output expanded to the
    batch, so the sum was n times too big: Ghost 87 % off, last-layer LAI 62 %), ``"add"`` broadcast against the
    batch (exact natively; ``"sub"`` subtracted), ``"mul"`` multiplied (not factorable: routed), ``"expand"`` expanded explicitly. The
    forward asserts the call's output is the module's own ([1, ...])."""

    def __init__(self, how: str, d: int = 4, k: int = 3) -> None:
        super().__init__()
        self.how = how
        self.register_buffer("c", torch.randn(1, d, generator=gen(5), dtype=torch.float64))
        self.ctx, self.a, self.head = nn.Linear(d, 5), nn.Linear(d, 5), nn.Linear(5, k)

    def forward(self, x):
        c = self.ctx(self.c)
        assert c.shape[0] == 1, "recording changed the model: the module's output is not its own"
        if self.how == "reduce":
            h = self.a(x) + c.sum(0)
        elif self.how == "add":
            h = self.a(x) + c
        elif self.how == "sub":
            h = self.a(x) - c
        elif self.how == "mul":
            h = self.a(x) * c
        else:
            h = self.a(x) + c.expand(x.shape[0], -1)
        return self.head(torch.tanh(h))


class MicroBatched(nn.Module):
    """The forward runs in micro-batches of ``k`` samples (layer calls of k rows: not the batch)."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k, self.a, self.head = k, nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return torch.cat([self.head(torch.tanh(self.a(c))) for c in x.split(self.k)])


class Coupled(nn.Module):
    """One sample's output depends on the others: ``"mean"`` (h - 0.5 h.mean(0)), ``"roll"`` (mixing in the
    neighbouring sample), ``"cumsum"`` (a running sum over the batch: only the last sample sees the others),
    ``"none"`` (the same model without coupling)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b, self.head = how, nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.how == "mean":
            h = h - 0.5 * h.mean(0)
        elif self.how == "roll":
            h = h + 0.3 * h.roll(1, 0)
        elif self.how == "cumsum":
            h = h.cumsum(0) / 2
        return self.head(torch.tanh(self.b(h)))


class Gated(nn.Module):
    """A 0-dim parameter (a ReZero gate) and a 0-dim temperature (Exact raised a raw IndexError)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 5), nn.Linear(5, 3)
        self.gate, self.temp = nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        return self.head(self.gate * torch.tanh(self.a(x))) / self.temp


class FreqEmbedding(nn.Module):
    """``nn.Embedding(scale_grad_by_freq=True)``: gradients scaled by batch frequencies (Exact returned numbers,
    Ghost called it undefined)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(9, 4, scale_grad_by_freq=True), nn.Linear(4, 9)

    def forward(self, ids):
        return self.head(self.emb(ids))


class TiedHeadBias(nn.Module):
    """A biased head sharing its weight with the embedding (GPT-2's ``lm_head``/``wte`` with a bias)."""

    def __init__(self, v: int = 9, d: int = 5) -> None:
        super().__init__()
        self.emb, self.fc, self.head = nn.Embedding(v, d), nn.Linear(d, d), nn.Linear(d, v)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.emb(ids))))


def context_setup(how: str) -> Setup:
    s = mlp_setup(Context(how))
    return s


def not_a_module() -> Setup:
    s = plain_mlp()
    s.model = lambda x: x  # a function, not an nn.Module
    return s


def loss_is_a_string() -> Setup:
    s = plain_mlp()
    s.loss_fn = "ce"
    return s


def batchnorm_without_stats() -> Setup:
    return mlp_setup(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)))


def frozen_batchnorm_without_stats_one_sample() -> Setup:
    """Found by the fuzzer: a frozen BatchNorm without running statistics (no trainable parameter, so no layer
    rule's check ran) on batches of one sample: torch's raw "Expected more than 1 value per channel"."""
    s = mlp_setup(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)),
                  n=2, n_train=1)
    s.model[1].requires_grad_(False)
    return s
