"""Small reference models built only from layers the fast estimators support.

Every trainable parameter lives in an ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``, ``nn.Embedding`` or
``nn.LayerNorm``, so Ghost and LAI apply to the whole network. Attention is written with ``nn.Linear``
projections (``nn.MultiheadAttention`` keeps its projection weights outside ``nn.Linear``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """Fully connected ReLU network. Input [n, d_in] -> logits [n, n_classes]."""

    def __init__(self, d_in: int = 40, hidden: tuple[int, ...] = (512, 512), n_classes: int = 10,
                 bias: bool = True) -> None:
        super().__init__()
        dims = (d_in, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], n_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class CNN1d(nn.Module):
    """1-D CNN for MNIST-1D. Input [n, length] or [n, 1, length] -> logits [n, n_classes]."""

    def __init__(self, length: int = 40, channels: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, kernel_size=5, padding="same")
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1, dilation=1)
        out_len = length
        for _ in range(2):
            out_len = (out_len + 2 - 3) // 2 + 1
        self.head = nn.Linear(channels * out_len, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.head(x.flatten(1))


class CNN2d(nn.Module):
    """2-D CNN for the 8x8 digits. Input [n, 1, 8, 8] -> logits [n, n_classes].

    Uses ``padding='same'``, a dilated conv, a grouped strided conv and biases, so one model exercises
    every unfolding option the estimators support.
    """

    def __init__(self, channels: int = 16, n_classes: int = 10, side: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding="same")
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding="same", dilation=2, groups=2)
        self.conv3 = nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, groups=4)
        out_side = (side + 2 - 3) // 2 + 1
        self.head = nn.Linear(2 * channels * out_side * out_side, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.head(x.flatten(1))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with ``nn.Linear`` projections. [n, T, d] -> [n, T, d]."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(n, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(y)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CausalTransformer(nn.Module):
    """Small byte-level causal language model. Token ids [n, T] -> next-token logits [n, T, vocab].

    Position ids are built with batch dimension 1 and broadcast, as most public implementations do.
    """

    def __init__(self, vocab_size: int = 256, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 128) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device).unsqueeze(0)
        x = self.tok(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_model(name: str, **kwargs) -> nn.Module:
    """Model by name: ``mlp``, ``cnn1d``, ``cnn2d``, ``small-cnn`` (:class:`validation.training.small_cnn.SmallCNN`,
    for the real MNIST digits) or ``transformer``."""
    from .small_cnn import SmallCNN

    registry = {"mlp": MLP, "cnn1d": CNN1d, "cnn2d": CNN2d, "small-cnn": SmallCNN, "transformer": CausalTransformer}
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(registry)}")
    return registry[name](**kwargs)
