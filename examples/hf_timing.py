"""Time each estimator on a tiny random GPT-2 relative to one training step on the same batch.

    python examples/hf_timing.py                     # defaults: batch 16, reference 8, 32 tokens, float32
    python examples/hf_timing.py --n-embd 64 --seq-len 64 --repeats 9

One training step = forward + backward of the batch's mean loss + ``optimizer.step()`` (SGD). Every
estimator scores the same padded batch against a padded reference batch (a forward pass over the reference
batch is part of each estimator's time). Times are medians over ``--repeats`` runs after one warm-up run, on
whatever device ``--device`` names. Nothing is downloaded: the model is built from a small config.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import influence
import influence.hf as H


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run (synchronising CUDA)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def estimator_times(model: torch.nn.Module, loss_fn, train, ref, lr: float, repeats: int,
                    device: torch.device) -> dict[str, float]:
    """Seconds for one training step and for each estimator on (train, ref)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put across repeats

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(**train[0]).logits, train[1]).mean().backward()
        opt.step()

    state = {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    runs = {
        "training step": train_step,
        "exact": lambda: influence.exact(model, loss_fn, train, ref, lr),
        "ghost": lambda: influence.ghost(model, loss_fn, train, ref, lr),
        "lai (all layers)": lambda: influence.lai(model, loss_fn, train, ref, lr),
        "lai (last layer)": lambda: influence.lai(model, loss_fn, train, ref, lr, layers="last"),
        "tracin (1 checkpoint)": lambda: influence.tracin(model, loss_fn, train, ref, [(state, lr)]),
    }
    return {name: median_seconds(fn, repeats, device) for name, fn in runs.items()}


def padded_batch(n: int, seq_len: int, vocab: int, generator: torch.Generator, device: torch.device):
    """n right-padded random sequences of lengths in [seq_len // 2, seq_len] as a causal-LM batch."""
    lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=generator)
    seqs = [torch.randint(1, vocab, (int(k),), generator=generator) for k in lengths]
    x, y = H.lm_batch(*H.pad(seqs, pad_id=0, length=seq_len))
    return {k: v.to(device) for k, v in x.items()}, y.to(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ref", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--n-embd", type=int, default=16)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = H.tiny_gpt2(vocab_size=args.vocab, n_positions=args.seq_len, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, dtype=getattr(torch, args.dtype)).to(device)
    gen = torch.Generator().manual_seed(0)
    train = padded_batch(args.batch, args.seq_len, args.vocab, gen, device)
    ref = padded_batch(args.ref, args.seq_len, args.vocab, gen, device)
    times = estimator_times(model, H.causal_lm_loss(), train, ref, lr=1e-3, repeats=args.repeats, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny GPT-2: {args.n_layer} layers, n_embd {args.n_embd}, vocab {args.vocab}, {n_params} parameters; "
          f"batch {args.batch} x {args.seq_len} tokens, reference {args.ref}; {args.dtype} on {device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    step = times["training step"]
    print(f"{'':24s}{'ms':>10s}{'x step':>10s}")
    for name, t in times.items():
        print(f"{name:24s}{1e3 * t:10.2f}{t / step:10.2f}")
    return times


if __name__ == "__main__":
    main()
