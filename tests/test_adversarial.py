"""Adversarial inputs: every case gives the exact number (float64, rel 1e-8 against a per-sample autograd loop,
``tests/reference.py``) or a named error (a subclass of ``influence.InfluenceError``). Never a silent wrong
number, never an obscure crash.

Each ``Case`` builds (model, loss_fn, train, ref, kwargs) and says, per estimator, what must happen: ``EXACT``
(``ghost`` and ``exact``: all trainable parameters; ``lai_last``: the output layer's parameters, which LAI's last
layer is exact on) or an error class. ``python tests/test_adversarial.py`` runs every (case, estimator) outside
pytest and prints the count: cases / exact / named error / silent wrong / obscure crash.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import influence
from influence import errors as E
from reference import reference_pairwise, reference_scores

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


# ---------------------------------------------------------------- the cases

G, X, L = ("ghost", "exact", "lai_last")
ALL_EXACT = {"ghost": EXACT, "exact": EXACT}
WITH_HEAD = {**ALL_EXACT, "lai_last": EXACT}


def refused(err: type[Exception], *estimators: str) -> dict[str, type[Exception]]:
    return {e: err for e in (estimators or ("ghost", "exact", "lai"))}


CASES = [
    # weights used outside their module
    Case("weight_outside_module", lambda: mlp_setup(LinearOutside()), WITH_HEAD),
    Case("weight_outside_module_transposed", lambda: mlp_setup(LinearOutside(transpose=True)), WITH_HEAD),
    Case("head_is_emb_weight_T", lambda: token_setup(HeadFromEmbedding()),
         {**ALL_EXACT, "lai_last": E.InfluenceError}),
    Case("tied_head_weight", lambda: token_setup(TiedHead()), ALL_EXACT),
    Case("mha_in_proj_frozen", lambda: mha_setup(True), WITH_HEAD),
    Case("mha_trainable", lambda: mha_setup(False), WITH_HEAD),
    Case("weight_norm_parametrization", weight_norm_setup, WITH_HEAD),
    Case("module_called_twice", lambda: mlp_setup(Twice()), ALL_EXACT),
    Case("bias_shared_with_norm", lambda: mlp_setup(SharedBiasNorm()), ALL_EXACT),
    # leading dimension not the batch
    Case("position_arange_T_eq_n", lambda: token_setup(NanoPositions(), n_train=4, n_ref=4, t=4), ALL_EXACT),
    Case("position_arange_T_ne_n", lambda: token_setup(NanoPositions(), n_train=4, n_ref=3, t=5), ALL_EXACT),
    Case("seq_first_linear_T_eq_n", lambda: seq_setup(SeqFirst(), 4, 4, 4), WITH_HEAD),
    Case("seq_first_linear_T_ne_n", lambda: seq_setup(SeqFirst(), 4, 3, 5), WITH_HEAD),
    Case("flattened_tokens_linear", lambda: seq_setup(FlatTokens(), 4, 3, 5), ALL_EXACT),
    Case("embedding_subclass_ids_from_mask", mask_positions_setup, WITH_HEAD),
    # outputs and losses
    Case("mse_n1_vs_n", regression_setup, WITH_HEAD),
    Case("mse_n1_vs_n1", lambda: regression_setup(1, (1,)), WITH_HEAD),
    Case("mse_n3_vs_n", lambda: regression_setup(3), refused(E.TargetShapeError)),
    Case("mse_n1_vs_n2", lambda: regression_setup(1, (2,)), refused(E.TargetShapeError)),
    Case("lai_last_output_doubled", lambda: mlp_setup(Transformed("double")), {L: E.InfluenceError, **ALL_EXACT}),
    Case("lai_last_output_log_softmax", lambda: mlp_setup(Transformed("log_softmax")),
         {L: E.InfluenceError, **ALL_EXACT}),
    Case("lai_last_output_times_one", lambda: mlp_setup(Transformed("times_one")), {L: E.InfluenceError}),
    Case("lai_last_output_plus_parameter", lambda: mlp_setup(Transformed("shift")),
         {L: E.InfluenceError, **ALL_EXACT}),
    Case("aux_logits_output", aux_setup, refused(E.ModelOutputError)),
    Case("aux_logits_selected_by_index", lambda: aux_setup(1), WITH_HEAD),
    Case("aux_logits_selected_by_function", lambda: aux_setup(lambda out: out[1]), WITH_HEAD),
    Case("dict_output_without_logits", lambda: mlp_setup(NoLogits()), refused(E.ModelOutputError)),
    Case("dict_output_selected_by_key", lambda: aux_setup_key(), {**ALL_EXACT, L: EXACT}),
    Case("soft_targets", soft_setup, {**WITH_HEAD, "lai": EXACT}),
    Case("soft_targets_tokens", lambda: soft_setup(tokens_dim=True), {**WITH_HEAD, "lai": EXACT}),
    Case("scalar_loss", scalar_loss, refused(E.LossShapeError)),
    # modes and layers
    Case("dropout_train_mode", lambda: with_mode(mlp_setup(nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5),
                                                                        nn.Linear(5, 3)))),
         refused(E.StochasticModuleError)),
    Case("batchnorm_train_mode", lambda: with_mode(conv_norm(nn.BatchNorm2d(4))), refused(E.TrainModeBatchNormError)),
    Case("batchnorm_eval", lambda: conv_norm(nn.BatchNorm2d(4)), WITH_HEAD),
    Case("groupnorm", lambda: conv_norm(nn.GroupNorm(2, 4)), WITH_HEAD),
    Case("batchnorm_output_modified_in_place", residual_setup, WITH_HEAD),
    Case("layernorm_no_bias_tokens", lambda: normed(nn.LayerNorm(6, bias=False), seq=True), WITH_HEAD),
    Case("custom_rmsnorm_class", lambda: normed(CustomRMSNorm(6), seq=True), WITH_HEAD),
    Case("gemma_rmsnorm_one_plus_weight", lambda: normed(CustomRMSNorm(6, one_plus=True)), WITH_HEAD),
    Case("class_token_and_position_parameter", lambda: additive_setup(), WITH_HEAD),
    Case("bare_parameter_scale", lambda: mlp_setup(Scaled()), {**ALL_EXACT, L: EXACT}),
    Case("exact_on_gru", lambda: rnn_setup(nn.GRU), WITH_HEAD),
    Case("exact_on_lstm", lambda: rnn_setup(nn.LSTM), WITH_HEAD),
    Case("transposed_conv", transposed_conv, WITH_HEAD),
    Case("t5_encoder_decoder_masks", t5_setup, WITH_HEAD),
    Case("layer_under_no_grad", lambda: mlp_setup(Detached("no_grad")), ALL_EXACT),
    Case("layer_output_detached_and_unused_layer", lambda: mlp_setup(Detached("detach")), ALL_EXACT),
    Case("padding_idx_repeated_ids", padded_embedding, WITH_HEAD),
    Case("tuple_inputs", lambda: dict_setup(False), WITH_HEAD),
    Case("dict_inputs", lambda: dict_setup(True), WITH_HEAD),
    # batches and arguments
    Case("batch_of_one", batch_of(1, 1), WITH_HEAD),
    Case("one_reference_sample", batch_of(5, 1), WITH_HEAD),
    Case("chunk_size_one", kw(plain_mlp, chunk_size=1), {**WITH_HEAD, "lai": EXACT}),
    Case("chunk_size_larger_than_batch", kw(plain_mlp, chunk_size=100), WITH_HEAD),
    Case("lr_zero_dim_tensor", kw(plain_mlp, lr=torch.tensor(0.1)), WITH_HEAD),
    Case("empty_train_batch", lambda: empty("train"), refused(E.EmptyBatchError)),
    Case("empty_ref_batch", lambda: empty("ref"), refused(E.EmptyBatchError)),
    Case("chunk_size_zero", kw(plain_mlp, chunk_size=0), refused(E.InvalidArgumentError)),
    Case("chunk_size_negative", kw(plain_mlp, chunk_size=-2), refused(E.InvalidArgumentError)),
    Case("lr_vector", kw(plain_mlp, lr=torch.tensor([0.1, 0.2])), refused(E.InvalidArgumentError)),
    Case("lr_string", kw(plain_mlp, lr="0.1"), refused(E.InvalidArgumentError)),
    Case("lr_nan", kw(plain_mlp, lr=float("nan")), refused(E.InvalidArgumentError)),
    Case("lr_inf", kw(plain_mlp, lr=math.inf), refused(E.InvalidArgumentError)),
    Case("lr_none", kw(plain_mlp, lr=None), refused(E.InvalidArgumentError)),
    Case("every_parameter_frozen", frozen_all, refused(E.NoTrainableParameterError)),
    Case("infinite_input", lambda: nonfinite_input(math.inf), refused(E.NonFiniteInputError)),
    Case("nan_input", lambda: nonfinite_input(math.nan), refused(E.NonFiniteInputError)),
    Case("nan_target", nan_target, refused(E.NonFiniteInputError)),
    Case("mismatched_batch_sizes", mismatched, refused(E.BatchSizeError)),
    Case("exact_params_unknown_name", kw(plain_mlp, params=["0.wieght"]), {X: E.UnknownParameterError}),
    Case("exact_params_frozen_name", lambda: frozen_bias(), {X: E.UnknownParameterError}),
    Case("exact_params_subset", kw(plain_mlp, params=["0.weight", "2.bias"]), {X: EXACT}),
]


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


# ---------------------------------------------------------------- running a case


ROUTED: dict[str, list[str]] = {}  # last run's parameters Ghost routed to Exact, by case (for the count's listing)


def run(est: str, s: Setup) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scores, the reference they must equal or None) for one estimator."""
    kwargs = dict(s.kwargs)
    lr = kwargs.pop("lr", LR)
    args = (s.model, s.loss_fn, s.train, s.ref)
    if est == "exact":
        r = influence.exact(*args, lr=lr, **kwargs)
        names = kwargs.get("params")
    elif est == "ghost":
        kwargs.pop("params", None)
        r = influence.ghost(*args, lr=lr, **kwargs)
        ROUTED["last"] = list(r.routed_to_exact)
        names = None
    else:
        kwargs.pop("params", None)
        r = influence.lai(*args, lr=lr, layers="last" if est == "lai_last" else "all", **kwargs)
        names = s.head
        if est == "lai":  # LAI over all layers is exact only where every scored layer is the output layer
            return r.scores, None
    lr_value = float(lr)
    return r.scores, reference_scores(s.model, s.loss_fn, s.train, s.ref, lr_value, names)


PARAMS = [pytest.param(c, est, id=f"{c.name}-{est}") for c in CASES for est in c.expect]


@pytest.mark.parametrize("case,est", PARAMS)
def test_case(f64, case: Case, est: str) -> None:
    expected = case.expect[est]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", influence.RoutedToExactWarning)
        warnings.simplefilter("ignore", influence.VmapFallbackWarning)
        setup = case.build()
        if expected is not None:
            with pytest.raises(expected):
                run(est, setup)
            return
        scores, want = run(est, setup)
    assert torch.isfinite(scores).all()
    if want is not None:
        assert scores.shape == want.shape
        err = (scores - want).abs().max().item() / max(want.abs().max().item(), 1e-300)
        assert err < TOL, f"rel err {err:.2e}"


def test_pairwise_chunked_ghost_equals_reference(f64) -> None:
    s = plain_mlp()
    r = influence.ghost(s.model, s.loss_fn, s.train, s.ref, lr=LR, pairwise=True, chunk_size=1)
    want = reference_pairwise(s.model, s.loss_fn, s.train, s.ref, LR)
    assert (r.pairwise - want).abs().max() < TOL * want.abs().max()


def test_dropout_in_eval_mode_is_deterministic(f64) -> None:
    s = mlp_setup(nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)))
    a = influence.ghost(s.model, s.loss_fn, s.train, s.ref, lr=LR).scores
    b = influence.ghost(s.model, s.loss_fn, s.train, s.ref, lr=LR).scores
    assert torch.equal(a, b)
    assert (a - reference_scores(s.model, s.loss_fn, s.train, s.ref, LR)).abs().max() < TOL * a.abs().max()


# ---------------------------------------------------------------- the count


def classify(case: Case, est: str) -> tuple[str, str]:
    """(outcome, detail): 'exact', 'named error', 'silent wrong' or 'obscure crash'; and whether it is the
    expected outcome."""
    expected = case.expect[est]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores, want = run(est, case.build())
    except E.InfluenceError as e:
        ok = expected is not None and isinstance(e, expected)
        return "named error", f"{type(e).__name__}{'' if ok else ' (UNEXPECTED)'}"
    except Exception as e:  # noqa: BLE001 - classify, do not hide
        return "obscure crash", f"{type(e).__name__}: {str(e)[:100]}"
    if want is None:
        good = bool(torch.isfinite(scores).all())
        return ("exact" if good else "silent wrong"), "finite" if good else "non-finite"
    err = (scores - want).abs().max().item() / max(want.abs().max().item(), 1e-300)
    if err < TOL:
        routed = f" routed to Exact: {', '.join(ROUTED.pop('last', []))}" if est == "ghost" and ROUTED.get("last") else ""
        return "exact", f"rel {err:.0e}{'' if expected is None else ' (EXPECTED AN ERROR)'}{routed}"
    return "silent wrong", f"rel {err:.1e}"


def main() -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    counts = {"exact": 0, "named error": 0, "silent wrong": 0, "obscure crash": 0}
    for case in CASES:
        for est in case.expect:
            outcome, detail = classify(case, est)
            counts[outcome] += 1
            print(f"{case.name + '-' + est:55s} {outcome:14s} {detail}", flush=True)
    total = sum(counts.values())
    print(f"\ncases {total} / exact {counts['exact']} / named error {counts['named error']} / silent wrong "
          f"{counts['silent wrong']} / obscure crash {counts['obscure crash']}")


if __name__ == "__main__":
    sys.path.insert(0, __file__.rpartition("/")[0])
    main()
