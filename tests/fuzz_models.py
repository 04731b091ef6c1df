"""Random small models for the model fuzzer (``tests/test_fuzz_models.py``): a hypothesis strategy of ``Spec``s and
``build(spec)``, which makes the float64 model, the batches and what the outcome must be, and ``check(spec)``,
which runs every estimator on it and classifies each outcome.

A model is: inputs (continuous [n, T, d] or token ids [n, T] through an ``nn.Embedding``), a stack of blocks that
map [n, T, d] to [n, T, d] (each drawn from ``BLOCKS``: the layers and operations real code uses, including the
ones the fast path must route or refuse), a pooled ([n, C]) or per-token ([n, T, C]) head (a ``Linear`` named
``head``, a ``Linear`` tied to the embedding, or the embedding's weight read outside its module), optionally run
in micro-batches. ``Truth.coupled`` says whether a sample's output depends on the other samples (then every
estimator must refuse by name).

Outcomes (per estimator: ghost, exact, lai, lai_last, theory): ``exact`` (the number, nothing routed),
``routed`` (Ghost: the number, some parameters scored by Exact), ``named`` (a subclass of
``influence.InfluenceError``), ``wrong`` (a number that is not the reference's, a non-finite LAI, any number for a
coupled model), ``obscure`` (any other exception). The reference is a per-sample autograd loop
(``tests/reference.py``); LAI over all layers must be finite, last-layer LAI equal to the reference restricted to
the head's parameters (the head's own use of them: a weight tied to the embedding is untied first, ``untied_head``), ``theory.decomposition`` must sum to Ghost - LAI and ``theory.data_bound`` bound |Ghost -
LAI|.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from reference import reference_scores
from torch import Tensor, nn
from torch.nn import functional as F

import influence
import theory

LR, TOL = 0.1, 1e-7
BLOCKS = ("linear", "conv", "layernorm", "rmsnorm", "groupnorm", "batchnorm_eval", "batchnorm_nostats", "attention",
          "reuse_inside", "reuse_outside", "seq_first", "flat_tokens", "context_add", "context_reduce",
          "context_mul", "batch_mean", "weight_norm", "symmetric", "custom_function", "gate", "micro",
          "position_arange", "position_row", "scale_vector", "in_batch_mix")
COUPLED = {"batchnorm_nostats", "batch_mean", "in_batch_mix"}
ESTIMATORS = ("ghost", "exact", "lai", "lai_last", "theory")
OUTCOMES = ("exact", "routed", "named", "wrong", "obscure")


@dataclass(frozen=True)
class Spec:
    """One drawn model and batch: sizes, input kind, blocks (name, frozen), head kind, pooling, micro-batching."""

    n_train: int
    n_ref: int
    tokens: int
    width: int
    classes: int
    embed: bool
    blocks: tuple[tuple[str, bool], ...]
    head: str  # "linear", "tied_module" (Linear sharing the embedding's weight), "tied_outside" (h @ emb.weight.T)
    per_token: bool
    micro: int  # 0: no micro-batching; k: the whole model runs on chunks of k samples
    freeze_head_bias: bool
    seed: int


@st.composite
def specs(draw: Any, max_blocks: int = 4) -> Spec:
    """A hypothesis strategy of ``Spec``s (small: n <= 5, T <= 3, width <= 6)."""
    embed = draw(st.booleans())
    head = draw(st.sampled_from(("linear", "linear", "tied_module", "tied_outside") if embed else ("linear",)))
    blocks = draw(st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from((False, False, False, True))),
                           min_size=0, max_size=max_blocks))  # (kind, frozen)
    return Spec(n_train=draw(st.integers(1, 5)), n_ref=draw(st.integers(1, 4)), tokens=draw(st.integers(1, 3)),
                width=draw(st.sampled_from((4, 6))), classes=draw(st.integers(2, 4)), embed=embed,
                blocks=tuple(blocks), head=head, per_token=draw(st.booleans()),
                micro=draw(st.sampled_from((0, 0, 0, 1, 2))), freeze_head_bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


# ---------------------------------------------------------------- blocks


class Cube(torch.autograd.Function):
    """A custom autograd.Function: x + x^3 / 3 with its hand-written backward 1 + x^2."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x + x ** 3 / 3

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (1 + x ** 2)


class Symmetric(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return (w + w.T) / 2


class Block(nn.Module):
    """One block [n, T, d] -> [n, T, d] of kind ``kind`` (see ``BLOCKS``)."""

    def __init__(self, kind: str, d: int, t: int) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("linear", "reuse_inside", "seq_first", "flat_tokens", "micro", "custom_function"):
            self.lin = nn.Linear(d, d)
        elif kind == "conv":
            self.conv = nn.Conv1d(d, d, 3, padding=1)
        elif kind == "layernorm":
            self.norm = nn.LayerNorm(d)
        elif kind == "rmsnorm":
            self.norm = nn.RMSNorm(d)
        elif kind == "groupnorm":
            self.norm = nn.GroupNorm(2, d)
        elif kind == "batchnorm_eval":
            self.norm = nn.BatchNorm1d(d)
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 1.5)
        elif kind == "batchnorm_nostats":
            self.norm = nn.BatchNorm1d(d, track_running_stats=False)
        elif kind == "attention":
            self.att = nn.MultiheadAttention(d, 2, batch_first=True)
        elif kind == "reuse_outside":
            self.lin, self.other = nn.Linear(d, d), nn.Linear(d, d)
        elif kind in ("context_add", "context_reduce", "context_mul"):
            self.register_buffer("c", torch.randn(1, d))
            self.ctx, self.lin = nn.Linear(d, d), nn.Linear(d, d)
        elif kind == "batch_mean" or kind == "in_batch_mix":
            self.lin = nn.Linear(d, d)
        elif kind == "weight_norm":
            self.lin = nn.utils.parametrizations.weight_norm(nn.Linear(d, d))
        elif kind == "symmetric":
            self.lin = nn.Linear(d, d)
            nn.utils.parametrize.register_parametrization(self.lin, "weight", Symmetric())
        elif kind == "gate":
            self.gate = nn.Parameter(torch.tensor(0.5))
        elif kind in ("position_arange", "position_row"):
            self.pos = nn.Embedding(t, d)
        elif kind == "scale_vector":
            self.scale = nn.Parameter(torch.ones(d))
        else:
            raise ValueError(kind)

    def forward(self, h: Tensor) -> Tensor:
        k, n, t = self.kind, h.shape[0], h.shape[1]
        if k == "linear":
            return torch.tanh(self.lin(h))
        if k == "conv":
            return torch.tanh(self.conv(h.transpose(1, 2))).transpose(1, 2)
        if k in ("layernorm", "rmsnorm"):
            return self.norm(h)
        if k in ("groupnorm", "batchnorm_eval", "batchnorm_nostats"):
            return self.norm(h.transpose(1, 2)).transpose(1, 2)
        if k == "attention":
            return h + self.att(h, h, h, need_weights=False)[0]
        if k == "reuse_inside":
            return torch.tanh(self.lin(torch.tanh(self.lin(h))))
        if k == "reuse_outside":
            return torch.tanh(self.lin(h) + F.linear(h, self.other.weight) + self.other(h))
        if k == "seq_first":
            return torch.tanh(self.lin(h.transpose(0, 1))).transpose(0, 1)
        if k == "flat_tokens":
            return torch.tanh(self.lin(h.reshape(n * t, -1))).reshape(n, t, -1)
        if k == "context_add":
            return torch.tanh(self.lin(h) + self.ctx(self.c))  # [1, d] broadcast against [n, T, d]
        if k == "context_reduce":
            return torch.tanh(self.lin(h) + self.ctx(self.c).sum(0))
        if k == "context_mul":
            return torch.tanh(self.lin(h) * self.ctx(self.c))
        if k == "batch_mean":
            u = torch.tanh(self.lin(h))
            return u - 0.5 * u.mean(0)
        if k == "in_batch_mix":
            u = torch.tanh(self.lin(h))
            return u + 0.3 * u.roll(1, 0)
        if k in ("weight_norm", "symmetric"):
            return torch.tanh(self.lin(h))
        if k == "custom_function":
            return torch.tanh(Cube.apply(self.lin(h)))
        if k == "gate":
            return h * self.gate
        if k == "micro":
            return torch.cat([torch.tanh(self.lin(c)) for c in h.split(2)])
        if k == "position_arange":
            return h + self.pos(torch.arange(t))  # [T, d], no batch dimension
        if k == "position_row":
            return h + self.pos(torch.arange(t)[None])  # [1, T, d]
        if k == "scale_vector":
            return h * self.scale
        raise ValueError(k)


class Model(nn.Module):
    """Inputs -> blocks -> head (see the module docstring)."""

    def __init__(self, s: Spec, d_in: int, vocab: int) -> None:
        super().__init__()
        d = s.width
        self.s = s
        self.inp = nn.Embedding(vocab, d) if s.embed else nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([Block(kind, d, s.tokens) for kind, _ in s.blocks])
        out = vocab if s.head != "linear" else s.classes
        if s.head in ("linear", "tied_module"):
            self.head = nn.Linear(d, out)
            if s.head == "tied_module":
                self.head.weight = self.inp.weight

    def body(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        if not self.s.per_token:
            h = h.mean(1)
        if self.s.head == "tied_outside":
            return h @ self.inp.weight.T
        return self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        if self.s.micro:
            return torch.cat([self.body(c) for c in x.split(self.s.micro)])
        return self.body(x)


@dataclass
class Truth:
    """What the outcome must be: ``coupled`` (every estimator refuses), ``head`` (the trainable parameter names
    last-layer LAI is exact on, None when the output is not a Linear's)."""

    coupled: bool
    head: list[str] | None


@dataclass
class Built:
    model: nn.Module
    train: tuple[Tensor, Tensor]
    ref: tuple[Tensor, Tensor]
    truth: Truth


def build(s: Spec) -> Built:
    """The float64 model (eval mode, seeded weights, frozen parts) and its batches."""
    g = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    vocab, d_in = 7, 3
    model = Model(s, d_in, vocab).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.6 + (0.5 if p.dim() == 0 else 0.0))
    for (kind, frozen), block in zip(s.blocks, model.blocks):
        if frozen:
            block.requires_grad_(False)
    head = None
    if s.head in ("linear", "tied_module"):
        if s.freeze_head_bias:
            model.head.bias.requires_grad_(False)
        head = [f"head.{k}" for k, p in model.head.named_parameters() if p.requires_grad]
    model.eval()
    n = s.n_train + s.n_ref
    out = vocab if s.head != "linear" else s.classes
    x = torch.randint(0, vocab, (n, s.tokens), generator=g) if s.embed else \
        torch.randn(n, s.tokens, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, out, (n, s.tokens) if s.per_token else (n,), generator=g)
    # coupled where some batch runs a coupling block on two samples or more at once (micro-batches of one sample
    # are independent)
    coupled = any(kind in COUPLED for kind, _ in s.blocks) and s.micro != 1 and max(s.n_train, s.n_ref) >= 2
    return Built(model, (x[:s.n_train], y[:s.n_train]), (x[s.n_train:], y[s.n_train:]), Truth(coupled, head))


# ---------------------------------------------------------------- running and classifying


def untied_head(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``head`` owns its parameters (a weight tied to the embedding is copied into a
    parameter of its own): last-layer LAI scores the output layer's own use of its parameters, which is Exact on
    this copy's head."""
    import copy
    m = copy.deepcopy(model)
    for k, p in list(m.head.named_parameters(recurse=False)):
        setattr(m.head, k, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
    return m


def _rel(a: Tensor, b: Tensor) -> float:
    scale = max(b.abs().max().item() if b.numel() else 0.0, 1e-12)
    return (a - b).abs().max().item() / scale if a.numel() else 0.0


def run(b: Built, est: str, got: dict[str, Any]) -> tuple[str, str]:
    """(outcome, detail) of one estimator on ``b``; ``got`` collects Ghost's and LAI's scores for theory."""
    m, loss, tr, rf = b.model, influence.cross_entropy, b.train, b.ref
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if est == "ghost":
                r = influence.ghost(m, loss, tr, rf, LR)
                got["ghost"] = r.scores
                kind = "routed" if r.routed_to_exact else "exact"
                want = None if b.truth.coupled else reference_scores(m, loss, tr, rf, LR)
            elif est == "exact":
                r = influence.exact(m, loss, tr, rf, LR)
                kind, want = "exact", None if b.truth.coupled else reference_scores(m, loss, tr, rf, LR)
            elif est == "lai":
                r = influence.lai(m, loss, tr, rf, LR)
                got["lai"] = r.scores
                if b.truth.coupled:
                    return "wrong", "a number for a coupled model"
                return ("exact", "finite") if bool(torch.isfinite(r.scores).all()) else ("wrong", "non-finite")
            elif est == "lai_last":
                r = influence.lai(m, loss, tr, rf, LR, layers="last")
                if b.truth.head is None:
                    return "wrong", "a number where no Linear produces the output"
                covered = [k for k in b.truth.head if k not in r.skipped]
                if not covered:
                    return "wrong", f"a number though every head parameter is skipped ({r.skipped})"
                kind, want = "exact", None if b.truth.coupled else \
                    reference_scores(untied_head(m), loss, tr, rf, LR, covered)
            else:
                if "ghost" not in got or "lai" not in got:
                    return "named", "skipped: Ghost or LAI refused"
                d = theory.decomposition(m, loss, tr, rf, LR)
                bound = theory.data_bound(m, loss, tr, rf, LR)
                if b.truth.coupled:
                    return "wrong", "a number for a coupled model"
                diff = got["ghost"] - got["lai"]
                total = sum(d.values()) if d else torch.zeros_like(diff)
                err = _rel(total, diff) if diff.abs().max() > 1e-12 else (total - diff).abs().max().item()
                if err > 1e-6:
                    return "wrong", f"decomposition off by {err:.1e}"
                slack = 1e-8 * max(1.0, float(diff.abs().max()))
                if bool((diff.abs() > bound + slack).any()):
                    return "wrong", "data bound violated"
                return "exact", "decomposition and bound hold"
    except influence.InfluenceError as e:
        return "named", f"{type(e).__name__}: {str(e)[:80]}"
    except Exception as e:  # noqa: BLE001 - classified, not hidden
        return "obscure", f"{type(e).__name__}: {str(e)[:200]}"
    if want is None:
        return "wrong", "a number for a coupled model"
    err = _rel(r.scores, want)
    return (kind, f"rel {err:.0e}") if err < TOL else ("wrong", f"rel {err:.1e}")


COUNTS: Counter = Counter()  # (estimator, outcome) -> count over every checked example in this process
EXAMPLES = [0]


def check(s: Spec) -> dict[str, tuple[str, str]]:
    """Every estimator's (outcome, detail) on the model of ``s``; counted in ``COUNTS``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        b = build(s)
        got: dict[str, Any] = {}
        out = {est: run(b, est, got) for est in ESTIMATORS}
    finally:
        torch.set_default_dtype(old)
    EXAMPLES[0] += 1
    for est, (kind, _) in out.items():
        COUNTS[est, kind] += 1
    return out


def table(counts: Counter | None = None, examples: int | None = None) -> str:
    """The counts as a table: one row per estimator and a total, a column per outcome."""
    counts = COUNTS if counts is None else counts
    lines = [f"examples {EXAMPLES[0] if examples is None else examples}",
             f"{'estimator':10s}" + "".join(f"{o:>9s}" for o in OUTCOMES)]
    for est in (*ESTIMATORS, "total"):
        row = [sum(counts[e, o] for e in ESTIMATORS) if est == "total" else counts[est, o] for o in OUTCOMES]
        lines.append(f"{est:10s}" + "".join(f"{v:9d}" for v in row))
    return "\n".join(lines)
