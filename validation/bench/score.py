"""Score a whole data set against a reference set with each estimator; throughput and peak memory side by side.

    lai score                                    # MNIST-1D MLP, 50,000 training samples vs 1,000 reference samples
    lai score --n-train 5000 --estimators lai,ghost --out results/score

Data: MNIST-1D generated locally at the requested size (``mnist1d``, cached under ``--out``), split into training
and reference samples. Model: the validation MLP (``validation.training.models``), trained ``--epochs`` epochs of
SGD first
so the scores are those of a model in training. For every estimator one ``influence.Session`` holds the reference
statistics (streamed over the reference set in batches) and ``influence.score_dataset`` scores the training set
batch by batch with a progress bar, resumable (per-batch files under ``--out/<estimator>``).

Printed per estimator: samples/s, the same data's plain forward+backward throughput measured in the same run, their
ratio, the peak resident memory above the start of scoring (sampled every 5 ms from /proc), and the top proponents
and opponents. A summary is written to ``--out/score_summary.json``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import influence
from influence.atomic import atomic_write_json
from influence.estimators import estimator_names, get_estimator
from validation.options import add_common, info, make_parser, progress_enabled, split_list, torch_threads


def choices() -> tuple[str, ...]:
    """The registered estimators that score a data set at the current weights (not the checkpoint ones, not the
    token-sequence-only ones: the data are MNIST-1D)."""
    return tuple(estimator_names(checkpoints=False, sequence_only=False))


def mnist1d(n: int, seed: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """n MNIST-1D samples (x float32 [n, 40], y int64 [n]) generated with ``mnist1d`` (cached under ``cache``)."""
    path = cache / f"mnist1d-{n}-seed{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = n, seed, 1.0 - 1e-9
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]])[:n].astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]])[:n].astype(np.int64)
    from influence.atomic import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x, y=y)
    return torch.from_numpy(x), torch.from_numpy(y)


class PeakMemory:
    """Peak resident set size (bytes) above the value at entry, sampled every ``interval`` s from /proc/self/statm
    (Linux; elsewhere ``peak`` stays None)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, None, threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            if rss is not None:
                self.top = max(self.top, rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.base = self._rss()
        self.top = self.base or 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self.base is not None:
            self.peak = max(0, self.top - self.base)


def forward_backward_rate(model: torch.nn.Module, data: tuple, batch_size: int) -> float:
    """Samples per second of plain forward + backward of the mean loss over ``data`` in batches."""
    n = len(data[1])
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        model.zero_grad(set_to_none=True)
        influence.cross_entropy(model(data[0][i:i + batch_size]), data[1][i:i + batch_size]).mean().backward()
    model.zero_grad(set_to_none=True)
    return n / (time.perf_counter() - t0)


def train(model: torch.nn.Module, data: tuple, epochs: int, lr: float, batch_size: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(data[1]), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            influence.cross_entropy(model(data[0][idx]), data[1][idx]).mean().backward()
            opt.step()


def build_parser(prog: str):
    p = make_parser(prog, __doc__)
    names = choices()
    p.add_argument("--estimators", type=lambda t: split_list(t, names, "estimator"), default=",".join(names),
                   help=f"comma-separated, from {', '.join(names)}")
    p.add_argument("--n-train", type=int, default=50_000, help="training samples scored")
    p.add_argument("--n-ref", type=int, default=1_000, help="reference samples")
    p.add_argument("--batch-size", type=int, default=500, help="samples per scored batch (and reference batch)")
    p.add_argument("--epochs", type=int, default=1, help="SGD epochs on the training set before scoring")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of the training and of the scores")
    add_common(p, out=("results/score", "folder for the data cache, resumable scores and score_summary.json"),
               seeds=("0", "seed of the data and the model (the first is used)"))
    return p


def main(argv: Sequence[str] | None = None, prog: str = "lai score") -> int:
    args = build_parser(prog).parse_args(argv)
    seed = args.seeds[0]
    out = Path(args.out)
    with torch_threads(args.threads) as threads:
        x, y = mnist1d(args.n_train + args.n_ref, seed, out / "data")
        train_set, ref = (x[:args.n_train], y[:args.n_train]), (x[args.n_train:], y[args.n_train:])
        torch.manual_seed(seed)
        from validation.training.models import build_model
        model = build_model("mlp").to(args.device)
        train(model, train_set, args.epochs, args.lr, args.batch_size, seed)
        model.eval()
        ref_batches = [(ref[0][i:i + args.batch_size], ref[1][i:i + args.batch_size])
                       for i in range(0, args.n_ref, args.batch_size)]
        fb = forward_backward_rate(model, train_set, args.batch_size)
        info(args, f"{args.n_train} training samples vs {args.n_ref} reference samples, MLP, batches of "
                   f"{args.batch_size}, {threads} thread(s); plain forward+backward: {fb:,.0f} samples/s")
        rows = []
        for name in args.estimators:
            estimator = get_estimator(name).session_options()
            t0 = time.perf_counter()
            with PeakMemory() as mem:
                session = influence.Session(model, influence.cross_entropy, ref_batches, lr=args.lr,
                                            n_train=args.batch_size, **estimator)
                ds = influence.score_dataset(session, train_set, batch_size=args.batch_size, out=out / name,
                                             progress=progress_enabled(args))
            seconds = time.perf_counter() - t0
            row = {"estimator": name, "samples_per_s": args.n_train / seconds, "forward_backward_per_s": fb,
                   "ratio": fb / (args.n_train / seconds), "seconds": seconds,
                   "peak_mb": None if mem.peak is None else mem.peak / 2 ** 20,
                   "proponents": ds.proponents(5).indices.tolist(), "opponents": ds.opponents(5).indices.tolist(),
                   "reused_samples": ds.reused,
                   "positive_fraction": float((ds.scores > 0).float().mean())}
            rows.append(row)
            peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MB"
            info(args, f"{name:9s} {row['samples_per_s']:>10,.0f} samples/s  (time {row['ratio']:.2f}x that of "
                       f"forward+backward)  peak +{peak}  score > 0: {row['positive_fraction']:.1%}  "
                       f"top proponents {row['proponents'][:3]}  opponents {row['opponents'][:3]}")
        atomic_write_json(out / "score_summary.json", {"n_train": args.n_train, "n_ref": args.n_ref,
                                                       "batch_size": args.batch_size, "threads": threads,
                                                       "rows": rows})
    return 0
