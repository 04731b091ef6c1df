"""CuratedTrainer: one curated step equals a hand-made step on the kept samples; gradient accumulation equals one
big batch; bf16 autocast trains while scoring in the model's dtype; an Adam optimizer warns once (float64 where
numbers are compared)."""

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import influence  # noqa: E402
import influence.hf as H  # noqa: E402
from influence.hf_trainer import CuratedTrainer, keep_nonnegative, keep_top_fraction  # noqa: E402

V, T, N = 40, 8, 16


class Docs(torch.utils.data.Dataset):
    def __init__(self, n=N, seed=0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, T + 1, (n,), generator=g)
        ids, mask = H.pad([torch.randint(1, V, (int(k),), generator=g) for k in lengths], 0, "right", length=T)
        self.x, self.y = H.lm_batch(ids, mask)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x["input_ids"][i], "attention_mask": self.x["attention_mask"][i],
                "labels": self.y[i]}


def reference():
    d = Docs(6, seed=1)
    return {"input_ids": d.x["input_ids"], "attention_mask": d.x["attention_mask"], "labels": d.y}


def make_trainer(tmp_path, model, *, bs=8, accum=1, steps=2, lr=0.5, sgd=True, estimator="lai", policy=None, **args):
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=bs, gradient_accumulation_steps=accum, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", seed=0, data_seed=0, dataloader_drop_last=True,
        max_grad_norm=0.0, disable_tqdm=True, **args)
    optimizers = (torch.optim.SGD(model.parameters(), lr=lr), None) if sgd else (None, None)
    return CuratedTrainer(model=model, args=targs, train_dataset=Docs(), reference=reference(),
                          loss_fn=H.causal_lm_loss(), estimator=estimator, optimizers=optimizers,
                          policy=policy or keep_nonnegative)


def tiny(dtype=torch.float64):
    return H.tiny_gpt2(vocab_size=V, n_positions=T, seed=0, dtype=dtype)


def test_one_step_equals_manual_step_on_kept_samples(tmp_path):
    model = tiny()
    start = copy.deepcopy(model)
    tr = make_trainer(tmp_path, model, steps=1, policy=keep_top_fraction(0.5))
    # the batch the Trainer will draw: its own dataloader, first batch
    first = next(iter(tr.get_train_dataloader()))
    tr.train()
    batch = ({k: first[k] for k in ("input_ids", "attention_mask")}, first["labels"])
    ref = ({k: v for k, v in reference().items() if k != "labels"}, reference()["labels"])
    scores = influence.lai(start, H.causal_lm_loss(), batch, ref, lr=0.5).scores
    keep = keep_top_fraction(0.5)(scores)
    assert tr.curation_log[0]["kept"] == int(keep.sum()) == 4
    losses = H.causal_lm_loss()(start(**batch[0]).logits, batch[1])
    loss = losses[keep].mean()
    grads = torch.autograd.grad(loss, list(start.parameters()))
    for p0, g, p1 in zip(start.parameters(), grads, model.parameters()):
        torch.testing.assert_close(p1, p0 - 0.5 * g, rtol=1e-10, atol=1e-12)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big, acc = tiny(), tiny()
    make_trainer(tmp_path / "big", big, bs=8, accum=1, steps=2).train()
    t = make_trainer(tmp_path / "acc", acc, bs=4, accum=2, steps=2)
    t.train()
    assert len(t.curation_log) == 2 and all(r["scored"] == 8 for r in t.curation_log)
    for (name, a), b in zip(big.named_parameters(), acc.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(big.parameters(), tiny().parameters()))  # it trained


def test_bf16_autocast_trains_and_adam_warns_once(tmp_path):
    model = tiny(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    tr = make_trainer(tmp_path, model, steps=2, sgd=False, bf16=True, estimator="lai-last")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.train()
    adam = [w for w in caught if "Adam-type" in str(w.message)]
    assert len(adam) == 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(r["scored"] == 8 and r["score_dtype"] == "float32" for r in tr.curation_log)


DDP = """
import sys, torch
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from test_hf_trainer import make_trainer, tiny
model = tiny()
tr = make_trainer({out!r}, model, bs=4, accum=1, steps=2, ddp_backend="gloo")
tr.train()
if dist.get_rank() == 0:
    torch.save({{"params": {{k: v.detach() for k, v in model.named_parameters()}}, "log": tr.curation_log}},
               {out!r} + "/ddp.pt")
# every rank waits for rank 0's save, then tears the process group down: a rank that exits while its peer still
# holds the Gloo group open aborted with SIGABRT ("terminate called without an active exception"), at random
dist.barrier()
dist.destroy_process_group()
"""


def test_two_process_ddp_equals_one_process(tmp_path):
    import os
    from conftest import run_torchrun
    script = tmp_path / "ddp.py"
    script.write_text(DDP.format(tests=os.path.dirname(__file__), out=str(tmp_path)))
    run_torchrun([str(script)], timeout=300)
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert [r["kept_global"] for r in got["log"]] and all(r["scored"] == 4 for r in got["log"])
    one = tiny()
    t = make_trainer(tmp_path / "one", one, bs=8, steps=2)
    t.train()
    assert [r["kept_global"] for r in got["log"]] == [r["kept"] for r in t.curation_log]
    for name, p in one.named_parameters():
        torch.testing.assert_close(got["params"][name], p.detach(), rtol=1e-9, atol=1e-11, msg=name)


def test_trainer_example_runs(monkeypatch):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "examples" / "hf_trainer_curation.py"
    spec = importlib.util.spec_from_file_location("hf_trainer_curation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mod.main(["--steps", "4", "--batch", "8", "--max-len", "24"])
    assert all(torch.isfinite(torch.tensor(v)) for v in r.values())
    assert 0 <= r["dropped_noisy"] <= 1 and 0 <= r["dropped_clean"] <= 1


def test_lai_one_pass_equals_scoring_then_training(tmp_path):
    """LAI without accumulation trains from its scoring forward (one pass); same parameters as two passes."""
    one, two = tiny(), tiny()
    t1 = make_trainer(tmp_path / "one", one, steps=2)
    t1.train()
    t2 = make_trainer(tmp_path / "two", two, steps=2)
    t2.one_pass = False
    t2.train()
    assert [r["passes"] for r in t1.curation_log] == [1, 1] and [r["passes"] for r in t2.curation_log] == [2, 2]
    assert [r["kept"] for r in t1.curation_log] == [r["kept"] for r in t2.curation_log]
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
