"""``lai tightness``: how tight are the bounds? Median ratio bound / |Ghost - LAI| for an MLP, a CNN and a
transformer (about a minute on 2 cores at the defaults).

    lai tightness                    # one row per model
    lai tightness --steps 0          # at initialisation
    lai tightness --seeds 0-2 --models mlp

Each model is trained briefly (float32, Adam) on an offline data set, then copied to float64 and scored on a
training batch against a held-out reference batch: the measured error Ghost_i - LAI_i (from the exact
decomposition, equal to ``influence.ghost - influence.lai``), the data-dependent bound and, where it
applies, the a-priori bound. Ratios are per training sample; samples with zero error are left out of the
median (counted in ``zero``). The per-(layer, pair) medians show the slack of each Cauchy-Schwarz step alone;
the per-sample ratio is larger because the bound adds absolute values over layers and reference samples while
the error's terms partly cancel. Also printed: Kendall tau(LAI, Ghost) against its guaranteed lower bounds and
the "score >= 0" filter's agreement against its guaranteed fraction.

Models: MLP (40 -> 512 -> 512 -> 10, ReLU) on MNIST-1D; CNN2d (16 channels, grouped/dilated/strided convs) on
the 8x8 digits; a one-block causal transformer (d_model 16, 2 heads) on pydoc text mapped to a 32-symbol
alphabet (the data-dependent bound needs the spectral norms of [T*C, T*C] Jacobian products, so the
vocabulary and context are kept small).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor, nn

import influence
from theory.analysis import analyse
from theory.ranking import filter_agreement, guaranteed_filter_accuracy, kendall_lower_bound
from validation.options import add_common, add_models, add_not_applicable, make_parser, split_list, torch_threads
from validation.training.models import MLP, CausalTransformer, CNN2d

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n()"  # 32 symbols; every other character maps to the space


@dataclass
class Setup:
    name: str
    model: nn.Module
    train: tuple[Tensor, Tensor]  # full training arrays
    ref: tuple[Tensor, Tensor]    # held-out arrays
    n_train: int
    n_ref: int


def alphabet_tokens(text: str) -> Tensor:
    """Lower-cased text as indices into ``ALPHABET`` (unknown characters -> the space), int64 [len]."""
    lookup = {c: i for i, c in enumerate(ALPHABET)}
    space = lookup[" "]
    return torch.tensor([lookup.get(c, space) for c in text.lower()], dtype=torch.int64)


def _text_pairs(docs: list[tuple[str, str]], seq_len: int) -> tuple[Tensor, Tensor]:
    from validation.data.datasets import lm_pairs

    xs, ys = zip(*(lm_pairs(alphabet_tokens(text), seq_len) for _, text in docs))
    return torch.cat(xs), torch.cat(ys)


def setups(seed: int, n: int, n_seq: int, seq_len: int) -> list[Setup]:
    """The three reference models with their data (float32; cast to float64 before scoring)."""
    from validation.data.datasets import load_digits, load_mnist1d, pydoc_documents, split_documents

    torch.manual_seed(seed)
    m1 = load_mnist1d(n_train=2000, n_test=500, seed=seed)
    dg = load_digits(seed=seed)
    docs_tr, docs_te = split_documents(pydoc_documents(), 0.1, seed)
    text_tr, text_te = _text_pairs(docs_tr, seq_len), _text_pairs(docs_te, seq_len)
    return [
        Setup("mlp", MLP(d_in=40, hidden=(512, 512), n_classes=10), (m1.x_train, m1.y_train),
              (m1.x_test, m1.y_test), n, n),
        Setup("cnn2d", CNN2d(channels=16, n_classes=10, side=8), (dg.x_train, dg.y_train), (dg.x_test, dg.y_test),
              n, n),
        Setup("transformer", CausalTransformer(vocab_size=len(ALPHABET), d_model=16, n_layers=1, n_heads=2,
                                               max_len=seq_len), text_tr, text_te, n_seq, n_seq),
    ]


def train_briefly(model: nn.Module, data: tuple[Tensor, Tensor], steps: int, seed: int, batch: int = 64,
                  lr: float = 3e-3) -> None:
    """``steps`` Adam steps on random minibatches (float32)."""
    if steps <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = influence.cross_entropy(model(x[idx]), y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _median_ratio(bound: Tensor | None, err: Tensor) -> float:
    if bound is None:
        return math.nan
    keep = err.abs() > 0
    return float((bound[keep] / err[keep].abs()).median()) if keep.any() else math.nan


def _pair_ratio(bound: dict[str, Tensor] | None, err: dict[str, Tensor]) -> float:
    """Median over (layer, i, v) with E_l(i, v) != 0 of beta_l(i, v) / |E_l(i, v)| (Cauchy-Schwarz slack alone,
    before the cancellations over layers and reference samples that the per-sample bound cannot see)."""
    if bound is None:
        return math.nan
    ratios = [bound[k][e != 0] / e[e != 0].abs() for k, e in err.items()]
    ratios = torch.cat([r.flatten() for r in ratios])
    return float(ratios.median()) if ratios.numel() else math.nan


def measure(setup: Setup, steps: int, seed: int, lr: float = 0.1) -> dict[str, Any]:
    """Train, score one batch pair in float64 and return the tightness statistics."""
    model = setup.model
    train_briefly(model, setup.train, steps, seed)
    model = model.double().eval()
    gen = torch.Generator().manual_seed(seed + 1)

    def pick(data: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
        idx = torch.randperm(len(data[0]), generator=gen)[:k]
        x = data[0][idx]
        return (x.double() if x.is_floating_point() else x), data[1][idx]

    train, ref = pick(setup.train, setup.n_train), pick(setup.ref, setup.n_ref)
    res = analyse(model, influence.cross_entropy, train, ref, lr)
    err, data, prior = res.error(), res.data_bound(), res.apriori_bound()
    ghost = influence.ghost(model, influence.cross_entropy, train, ref, lr).scores
    lai = ghost - err
    tau = float(kendalltau(lai.numpy(), ghost.numpy()).statistic)
    return {
        "model": setup.name, "n_train": setup.n_train, "n_ref": setup.n_ref,
        "median_abs_error": float(err.abs().median()), "zero": int((err == 0).sum()),
        "data/err": _median_ratio(data, err), "apriori/err": _median_ratio(prior, err),
        "apriori/data": float((prior / data).median()) if prior is not None else math.nan,
        "pair data/err": _pair_ratio(res.data_pairwise, res.error_pairwise),
        "pair apriori/err": _pair_ratio(res.apriori_pairwise, res.error_pairwise),
        "kendall": tau, "kendall_lb_data": kendall_lower_bound(ghost, data),
        "kendall_lb_apriori": kendall_lower_bound(ghost, prior) if prior is not None else math.nan,
        "filter": filter_agreement(ghost, lai), "filter_lb_data": guaranteed_filter_accuracy(ghost, data),
        "apriori_note": "" if prior is not None else (res.apriori_reason or "").split(";")[0],
        "data_violations": int((data < err.abs()).sum()),
        "apriori_violations": int((prior < data).sum()) if prior is not None else 0,
    }


def format_row(r: dict[str, Any]) -> str:
    def f(x: float) -> str:
        return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.3g}"
    return (f"{r['model']:<12} n={r['n_train']:>3}x{r['n_ref']:<3} |err| med {f(r['median_abs_error']):>8}  "
            f"data/err {f(r['data/err']):>7}  apriori/err {f(r['apriori/err']):>8}  apriori/data "
            f"{f(r['apriori/data']):>7}  per (layer,pair) data/err {f(r['pair data/err'])} apriori/err "
            f"{f(r['pair apriori/err'])}  tau {f(r['kendall'])} (lb data {f(r['kendall_lb_data'])}, apriori "
            f"{f(r['kendall_lb_apriori'])})  filter {f(r['filter'])} (lb {f(r['filter_lb_data'])})")


MODELS = ("mlp", "cnn2d", "transformer")


def build_parser(prog: str = "lai tightness") -> argparse.ArgumentParser:
    p = make_parser(prog, __doc__)
    p.add_argument("--steps", type=int, default=200, help="Adam steps before measuring (0: at initialisation)")
    p.add_argument("--n", type=int, default=32, help="train and reference samples for the MLP and CNN")
    p.add_argument("--n-seq", type=int, default=8, help="train and reference sequences for the transformer")
    p.add_argument("--seq-len", type=int, default=8, help="tokens per transformer sequence")
    add_models(p, MODELS)
    add_common(p, out=(None, "also write the rows to DIR/tightness.json (default: print only)"),
               seeds=("0", "seeds (one row per model and seed)"), device=False)
    add_not_applicable(p, {"--device": "the bounds are measured in float64 on the CPU"})
    return p


def main(argv: list[str] | None = None, prog: str = "lai tightness") -> int:
    """Print one row per (model, seed); exit status 1 if a bound is violated anywhere."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    try:
        wanted = split_list(args.models, MODELS, "model")
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    violated = False
    rows: list[dict[str, Any]] = []
    with torch_threads(args.threads):
        for seed in args.seeds:
            torch.manual_seed(seed)
            np.random.seed(seed)
            print(f"median over training samples of bound / |Ghost - LAI| (steps={args.steps}, seed={seed}, "
                  "float64)", flush=True)
            for s in setups(seed, args.n, args.n_seq, args.seq_len):
                if s.name not in wanted:
                    continue
                r = measure(s, args.steps, seed)
                rows.append({"model": s.name, "seed": seed, **r})
                print(format_row(r), flush=True)
                if r["apriori_note"]:
                    print(f"{'':<12} a-priori bound n/a: {r['apriori_note']}")
                if r["data_violations"] or r["apriori_violations"]:
                    violated = True
                    print(f"{'':<12} VIOLATIONS: data {r['data_violations']}, apriori {r['apriori_violations']}")
    if args.out is not None:
        from influence.atomic import atomic_write_json

        path = Path(args.out) / "tightness.json"
        atomic_write_json(path, {"steps": args.steps, "rows": rows})
        print(f"written: {path}")
    return 1 if violated else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
