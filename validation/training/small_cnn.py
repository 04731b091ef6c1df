"""A small CNN for single-channel square images (28x28 MNIST, 14x14 pooled), from layers the estimators support.

Every trainable parameter lives in an ``nn.Conv2d`` or ``nn.Linear``; between them only ReLU and parameter-free
pooling, no BatchNorm and no dropout, so Exact, Ghost and LAI all apply to the whole network.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SmallCNN(nn.Module):
    """conv(c->w, 3, pad 1) relu pool2 -> conv(w->2w, 3, pad 1) relu pool2 -> linear(2w * (s//4)^2 -> K).

    Input [n, c, s, s] (or [n, s, s] for c = 1; c = ``in_channels``, 3 for CIFAR) -> logits [n, K]. ``pool``: ``"max"`` or ``"avg"`` (2x2, stride 2).
    For s = 28: 28 -> 14 -> 7, head 784 -> 10 at w = 8; for s = 14: 14 -> 7 -> 3, head 144 -> 10.
    """

    def __init__(self, in_hw: int = 28, num_classes: int = 10, width: int = 8, pool: str = "max",
                 in_channels: int = 1) -> None:
        super().__init__()
        if in_hw < 4:
            raise ValueError(f"in_hw must be at least 4 (two 2x2 poolings), got {in_hw}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.in_hw, self.pool = in_hw, pool
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        side = in_hw // 2 // 2
        self.head = nn.Linear(2 * width * side * side, num_classes)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2) if self.pool == "max" else F.avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self._pool(F.relu(self.conv1(x)))
        x = self._pool(F.relu(self.conv2(x)))
        return self.head(x.flatten(1))


def small_cnn(in_hw: int = 28, num_classes: int = 10, width: int = 8, pool: str = "max",
              in_channels: int = 1) -> SmallCNN:
    """:class:`SmallCNN` for ``in_hw`` x ``in_hw`` images with ``in_channels`` channels (28 for MNIST, 14 for
    ``pool=2``; 32 and 3 channels for CIFAR)."""
    return SmallCNN(in_hw, num_classes, width, pool, in_channels)
