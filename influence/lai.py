"""Layer-aware influence (LAI): forward activations and the loss-to-output gradient only, no backward pass.

LAI_i = lr * mean_v (g_i . g_v) * sum_l (a^l_i . a^l_v), with g = dl/df from the outputs. For token
sequences (f of shape [n, T, C]) and a layer with the same T:

* ``token_pairing="all_pairs"`` (default): sum_l sum_{t,t'} (a_{i,t} . a_{v,t'}) (g_{i,t} . g_{v,t'}), exact on the
  last layer because its output gradient is g;
* ``"aligned"``: (sum_t g_{i,t} . g_{v,t}) * sum_l sum_t (a_{i,t} . a_{v,t}), each sample's tokens flattened into
  one vector, as in the original research code; not exact even on the last layer.

A layer whose positions do not match f's (a convolution, or token layers under a per-sequence output)
uses its flattened input map with the aligned pairing. Linear and conv layers with a trainable bias
contribute (a . a' + 1); embeddings contribute the count of equal ids (``padding_idx`` excluded).
LayerNorm/RMSNorm parameters have no LAI term: their gradient is not an outer product with b.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .batch import Batch, LossFn, check_batch, take
from .capture import Capture, capture_forward, plan
from .errors import InfluenceError
from .factors import Block, Dense, Index, Segment
from .ghost import finish
from .layers import OUTER_TYPES, lai_activation
from .result import InfluenceResult
from .scoring import DEFAULT_BUDGET, ReferenceSide

PAIRINGS = ("all_pairs", "aligned")


def output_factor(cap: Capture) -> Dense:
    """g as a token factor: [n, T, 1, C] for outputs [n, T, C], else [n, 1, 1, prod(rest)]."""
    g = cap.g
    n = g.shape[0]
    return Dense(g.reshape(n, g.shape[1], 1, g.shape[2]) if g.dim() == 3 else g.reshape(n, 1, 1, -1))


def last_layer(cap: Capture, modules: dict[str, nn.Module]) -> str:
    """The trainable layer that ran last; it must produce the model output (so its b is g)."""
    name = cap.order[-1]
    module = modules[name]
    if not isinstance(module, nn.Linear):
        raise InfluenceError(f"{name}: the last trainable layer is a {type(module).__name__}; last-layer LAI needs a "
                             "Linear output layer whose output is the model output")
    if cap.calls[name][-1].out_ptr != cap.f.data_ptr():
        raise InfluenceError(f"{name}: the last trainable layer's output is not the model output (the model "
                             "transforms it further), so its output gradient is not g; last-layer LAI would not "
                             "be exact")
    return name


def lai_blocks(cap: Capture, modules: dict[str, nn.Module], token_pairing: str) -> dict[str, Block]:
    """One block per layer: segments (g, a) for every call of the layer."""
    g = output_factor(cap)
    blocks = {}
    for name in cap.order:
        if name not in modules:
            continue
        segments = []
        for call in cap.calls[name]:
            act = lai_activation(modules[name], call.inp)
            if act is None:
                continue
            if token_pairing == "all_pairs" and act.tokens == g.tokens:
                segments.append(Segment(g, act))
            else:
                flat = act.flatten_tokens()
                left = g.flatten_tokens()
                if isinstance(flat, Index):
                    left = left.expand_tokens(flat.tokens)
                segments.append(Segment(left, flat))
        if segments:
            blocks[name] = Block(name, segments)
    return blocks


class LazyBlocks(Mapping):
    """``lai_blocks`` as a mapping that builds a layer's block when it is read and does not keep it, so scoring
    (``ReferenceSide``) holds one layer's activation factors at a time instead of all of them."""

    def __init__(self, cap: Capture, modules: dict[str, nn.Module], token_pairing: str) -> None:
        self.cap, self.modules, self.token_pairing = cap, modules, token_pairing
        self.names = [name for name in cap.order if name in modules]

    def __getitem__(self, name: str) -> Block:
        if name not in self.modules:
            raise KeyError(name)
        return lai_blocks(self.cap, {name: self.modules[name]}, self.token_pairing)[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def lai(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *, layers: str = "all",
        token_pairing: str = "all_pairs", pairwise: bool = False, mode: str = "auto", chunk_size: int | None = None,
        memory_budget: int = DEFAULT_BUDGET) -> InfluenceResult:
    """Layer-aware influence from one forward pass over train and reference samples.

    ``layers``: ``"all"`` (every Linear/Conv/Embedding layer with trainable parameters) or ``"last"`` (the
    output layer only, exact). ``result.train_outputs`` holds the model output on the training batch (for
    reuse in a training step) when it was scored in one chunk.
    """
    if layers not in ("all", "last"):
        raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
    if token_pairing not in PAIRINGS:
        raise ValueError(f"token_pairing must be one of {PAIRINGS}, got {token_pairing!r}")
    n_t, n_v = check_batch(train, "train"), check_batch(ref, "ref")
    pl = plan(model)
    ref_cap = capture_forward(model, loss_fn, ref, pl.modules, n_v, "ref")
    modules = {n: m for n, m in pl.modules.items() if isinstance(m, OUTER_TYPES)}
    if layers == "last":
        name = last_layer(ref_cap, pl.modules)
        modules = {name: modules[name]}
    side = ReferenceSide(LazyBlocks(ref_cap, modules, token_pairing), n_t, pairwise, mode, memory_budget)
    del ref_cap
    chunk = chunk_size or n_t
    chunks, losses, outputs = [], [], None
    for i in range(0, n_t, chunk):
        c = min(chunk, n_t - i)
        cap = capture_forward(model, loss_fn, take(train, slice(i, i + c)), pl.modules, c, "train")
        chunks.append(side.score(LazyBlocks(cap, modules, token_pairing), c, cap.losses))
        losses.append(cap.losses)
        outputs = cap.f if c == n_t else None
    result = finish(f"lai[{layers},{token_pairing}]", lr, side, chunks, pairwise, torch.cat(losses))
    result.train_outputs = outputs
    return result
