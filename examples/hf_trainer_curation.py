"""Curated fine-tuning inside a Hugging Face ``Trainer``: a tiny GPT-2 on CPython's pydoc paragraphs, a fraction of
them replaced by random bytes, trained with ``influence.hf_trainer.CuratedTrainer`` (LAI scores against held-out
paragraphs, keep score >= 0) next to the plain ``Trainer`` on the same batches.

    python examples/hf_trainer_curation.py                  # about a minute on 2 CPU cores
    python examples/hf_trainer_curation.py --steps 200 --estimator ghost

The curation itself is the ten lines in :func:`curated_trainer`; the rest builds the data and compares. Prints the
held-out loss of both runs and the fraction of noisy and clean paragraphs the curated run dropped.
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
import transformers

import influence.hf as H
from influence.hf_trainer import CuratedTrainer
from validation.data.datasets import encode, pydoc_documents, split_documents
from validation.data.noise import corrupt_documents

PAD_ID = 0


class Paragraphs(torch.utils.data.Dataset):
    """Byte-level causal-LM samples, right-padded to ``max_len``: dicts of input_ids, attention_mask, labels, id."""

    def __init__(self, texts: list[str], max_len: int) -> None:
        ids, mask = H.pad([encode(t)[:max_len] for t in texts], PAD_ID, "right", length=max_len)
        self.x, self.y = H.lm_batch(ids, mask)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x["input_ids"][i], "attention_mask": self.x["attention_mask"][i],
                "labels": self.y[i], "id": torch.tensor(i)}

    def batch(self) -> dict[str, torch.Tensor]:
        return {**self.x, "labels": self.y}


def paragraphs(docs: list[tuple[str, str]], min_len: int, max_len: int) -> list[str]:
    """Paragraphs (split on blank lines, whitespace collapsed) of at least ``min_len`` bytes, cut to ``max_len``."""
    out = []
    for _, text in docs:
        for par in text.split("\n\n"):
            raw = " ".join(par.split()).encode()[:max_len].decode(errors="ignore")
            if len(raw.encode()) >= min_len:
                out.append(raw)
    return out


def training_args(out: str, steps: int, batch: int, lr: float, seed: int) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr, seed=seed,
        data_seed=seed, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
        remove_unused_columns=False)


def curated_trainer(model, args, train, held_out, estimator: str) -> CuratedTrainer:
    """The user code: a Trainer that scores each batch against a fresh held-out reference subset, keeps score >= 0."""
    gen = torch.Generator().manual_seed(args.seed)

    def reference() -> dict[str, torch.Tensor]:  # 16 held-out paragraphs, drawn anew every step
        idx = torch.randperm(len(held_out), generator=gen)[:16]
        return {k: v[idx] for k, v in held_out.batch().items()}

    return CuratedTrainer(model=model, args=args, train_dataset=train, reference=reference,
                          loss_fn=H.causal_lm_loss(), estimator=estimator, index_key="id")


class PlainTrainer(transformers.Trainer):
    """The vanilla run: the Trainer with the same per-sample loss (mean over samples), ids removed."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = H.causal_lm_loss()(out.logits, labels).mean()
        return (loss, out) if return_outputs else loss


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: Paragraphs) -> float:
    model.eval()
    return float(H.causal_lm_loss()(model(**data.x).logits, data.y).mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--noise", type=float, default=0.3, help="fraction of training paragraphs replaced by random bytes")
    ap.add_argument("--estimator", default="lai", choices=["lai", "lai-last", "ghost", "exact"])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    train_docs, val_docs = split_documents(pydoc_documents(), val_fraction=0.2, seed=args.seed)
    noise = corrupt_documents(paragraphs(train_docs, 16, args.max_len), args.noise, seed=args.seed,
                              mode="random_bytes")
    train, held_out = Paragraphs(noise.texts, args.max_len), Paragraphs(paragraphs(val_docs, 16, args.max_len),
                                                                        args.max_len)
    base = H.tiny_gpt2(vocab_size=256, n_positions=args.max_len, n_embd=32, n_layer=2, n_head=4, seed=args.seed)
    print(f"{len(train)} training paragraphs ({int(noise.is_noisy.sum())} noisy), {len(held_out)} held out; "
          f"{args.steps} steps of {args.batch}")
    results = {}
    with tempfile.TemporaryDirectory() as out:
        vanilla = copy.deepcopy(base)
        PlainTrainer(model=vanilla, args=training_args(out, args.steps, args.batch, args.lr, args.seed),
                     train_dataset=train).train()
        curated = copy.deepcopy(base)
        trainer = curated_trainer(curated, training_args(out, args.steps, args.batch, args.lr, args.seed), train,
                                  held_out, args.estimator)
        trainer.train()
    dropped = torch.tensor([i for row in trainer.curation_log for i in row["dropped"]], dtype=torch.long)
    seen = torch.tensor([i for row in trainer.curation_log for i in row["ids"]], dtype=torch.long)
    noisy_seen = int(noise.is_noisy[seen].sum())
    results = {"vanilla_heldout_loss": heldout_loss(vanilla, held_out),
               "curated_heldout_loss": heldout_loss(curated, held_out),
               "dropped_noisy": float(noise.is_noisy[dropped].sum()) / max(noisy_seen, 1),
               "dropped_clean": float((~noise.is_noisy[dropped]).sum()) / max(len(seen) - noisy_seen, 1)}
    print(f"held-out loss: vanilla {results['vanilla_heldout_loss']:.4f}, curated ({args.estimator}) "
          f"{results['curated_heldout_loss']:.4f}; dropped {results['dropped_noisy']:.1%} of noisy and "
          f"{results['dropped_clean']:.1%} of the clean paragraphs it saw")
    return results


if __name__ == "__main__":
    main()
