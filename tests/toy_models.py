"""Tiny networks and batches the theory is checked on (tests). All models come in eval mode.

``mlp`` and ``cnn`` are ``nn.Sequential`` stacks of supported layers and elementwise activations;
``residual_ln_mlp`` adds a pre-LayerNorm residual block (a-priori bound through LayerNorm and a residual);
``tiny_transformer`` is ``validation.training.models.CausalTransformer`` at toy size (attention: data bound only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from validation.training.models import CausalTransformer

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def mlp(d_in: int = 5, widths: tuple[int, ...] = (4, 3), n_classes: int = 3, activation: str = "relu",
        bias: bool = True) -> nn.Sequential:
    """Linear -> activation -> ... -> Linear. Input [n, d_in] -> [n, n_classes]."""
    dims = (d_in, *widths)
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b, bias=bias), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(dims[-1], n_classes, bias=bias))
    return nn.Sequential(*layers).eval()


def cnn(dim: int = 1, size: int = 8, channels: tuple[int, ...] = (4, 4), kernel: int = 3, stride: int = 1,
        padding: int | str = 1, dilation: int = 1, groups: int = 1, bias: bool = True, activation: str = "relu",
        n_classes: int = 3) -> nn.Sequential:
    """Conv -> activation -> ... -> Flatten -> Linear. Input [n, 1, size] (dim 1) or [n, 1, size, size]."""
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    layers: list[nn.Module] = []
    c_in = 1
    for k, c in enumerate(channels):
        g = groups if k > 0 else 1
        layers += [conv(c_in, c, kernel, stride=1 if padding == "same" else stride, padding=padding,
                        dilation=dilation, groups=g, bias=bias), ACTIVATIONS[activation]()]
        c_in = c
    body = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():
        width = body(torch.zeros(1, 1, *([size] * dim))).shape[1]
    return nn.Sequential(*body, nn.Linear(width, n_classes, bias=bias)).eval()


class ResidualLNMLP(nn.Module):
    """x -> Linear -> x + W2 relu(W1 LayerNorm(x)) -> LayerNorm -> Linear."""

    def __init__(self, d_in: int = 5, d: int = 4, n_classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.head(self.ln_f(h))


def residual_ln_mlp(d_in: int = 5, d: int = 4, n_classes: int = 3) -> ResidualLNMLP:
    return ResidualLNMLP(d_in, d, n_classes).eval()


def tiny_transformer(vocab: int = 7, d_model: int = 8, n_layers: int = 1, n_heads: int = 2,
                     max_len: int = 4) -> CausalTransformer:
    return CausalTransformer(vocab, d_model, n_layers, n_heads, max_len).eval()


def classification_batch(shape: tuple[int, ...], n: int, n_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian inputs [n, *shape] and uniform labels, seeded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen, dtype=torch.get_default_dtype())
    return x, torch.randint(0, n_classes, (n,), generator=gen)


def token_batch(n: int, length: int, vocab: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random ids [n, length] and next-token targets [n, length], seeded."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (n, length), generator=gen),
            torch.randint(0, vocab, (n, length), generator=gen))
