"""Curated training in the Trainer: one curated step equals a hand-made step on the kept samples; gradient
accumulation equals one big batch; bf16 autocast trains while scoring in the model's dtype; LAI under Adam warns
once; ``curate`` composes with a user's own Trainer subclass; the reference in every form; the model's own loss;
index_key under default TrainingArguments; Adam-aware Ghost scores; a step that skipped curation raises (float64
where numbers are compared)."""

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import influence  # noqa: E402
import influence.hf as H  # noqa: E402
from influence.hf_trainer import (  # noqa: E402
    MIN_TRANSFORMERS,
    CuratedTrainer,
    CurationNotAppliedError,
    IndexKeyError,
    LossNotDerivableError,
    TransformersVersionError,
    check_transformers,
    curate,
    keep_nonnegative,
    keep_top_fraction,
    model_loss_fn,
)

V, T, N = 40, 8, 16


@pytest.fixture(autouse=True)
def fresh_accelerator_state(monkeypatch):
    """transformers 4.46's TrainingArguments(bf16=True) exports ACCELERATE_MIXED_PRECISION=bf16 to the process and
    accelerate 1.1 keeps its state between Accelerators, so a bf16 test would make later tests' Trainers bf16 too:
    both are restored after each test."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)


class Docs(torch.utils.data.Dataset):
    def __init__(self, n=N, seed=0, ids=False):
        self.ids = ids
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, T + 1, (n,), generator=g)
        ids, mask = H.pad([torch.randint(1, V, (int(k),), generator=g) for k in lengths], 0, "right", length=T)
        self.x, self.y = H.lm_batch(ids, mask)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        item = {"input_ids": self.x["input_ids"][i], "attention_mask": self.x["attention_mask"][i], "labels": self.y[i]}
        return {**item, "id": i} if self.ids else item


def reference():
    d = Docs(6, seed=1)
    return {"input_ids": d.x["input_ids"], "attention_mask": d.x["attention_mask"], "labels": d.y}


def training_args(tmp_path, *, bs=8, accum=1, steps=2, lr=0.5, **args):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=bs, gradient_accumulation_steps=accum, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", seed=0, data_seed=0, dataloader_drop_last=True,
        max_grad_norm=0.0, disable_tqdm=True, **args)


def make_trainer(tmp_path, model, *, bs=8, accum=1, steps=2, lr=0.5, sgd=True, estimator="lai", policy=None, **args):
    targs = training_args(tmp_path, bs=bs, accum=accum, steps=steps, lr=lr, **args)
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


def test_bf16_autocast_trains_and_lai_under_adam_warns_once(tmp_path):
    model = tiny(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    tr = make_trainer(tmp_path, model, steps=2, sgd=False, bf16=True, estimator="lai-last")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.train()
    adam = [w for w in caught if issubclass(w.category, influence.OptimizerWarning)]
    assert len(adam) == 1 and "AdamW" in str(adam[0].message)
    assert not any(r["preconditioned"] for r in tr.curation_log)
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


def trained(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_same_params(a, b):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-11, msg=name)


class CountingTrainer(transformers.Trainer):
    """A user's own subclass: counts its training steps and calls super()."""

    calls = 0

    def training_step(self, *args, **kwargs):
        CountingTrainer.calls += 1
        return super().training_step(*args, **kwargs)


def test_curate_composes_with_a_users_trainer_subclass(tmp_path):
    """``curate(MyTrainer(...), reference)`` trains as CuratedTrainer does, and the subclass's override still runs."""
    own, ref_model = tiny(), tiny()
    CountingTrainer.calls = 0
    model = own
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # the user's lines (loss_fn derived from the model):
    trainer = CountingTrainer(model=model, args=training_args(tmp_path / "own"), train_dataset=Docs(),
                              optimizers=(opt, None))
    trainer = curate(trainer, reference=reference())
    trainer.train()
    assert type(trainer).__name__ == "CuratedCountingTrainer" and isinstance(trainer, CountingTrainer)
    assert CountingTrainer.calls == 2 and len(trainer.curation_log) == 2
    t = make_trainer(tmp_path / "ref", ref_model, steps=2)
    t.train()
    assert [r["kept"] for r in trainer.curation_log] == [r["kept"] for r in t.curation_log]
    assert any(r["kept"] < r["scored"] for r in t.curation_log)  # curation dropped samples: a real comparison
    assert_same_params(trained(own), trained(ref_model))
    with pytest.raises(ValueError, match="already curated"):
        curate(trainer, reference=reference())


def split_reference():
    r = reference()
    return {k: v for k, v in r.items() if k != "labels"}, r["labels"]


@pytest.mark.parametrize("form", ["tuple", "list", "dataloader", "callable"])
def test_reference_in_every_form_equals_the_dict_batch(tmp_path, form):
    base, other = tiny(), tiny()
    make_trainer(tmp_path / "dict", base, estimator="ghost").train()
    rows = [{"input_ids": a, "attention_mask": m, "labels": y} for a, m, y in
            zip(reference()["input_ids"], reference()["attention_mask"], reference()["labels"])]
    loader = torch.utils.data.DataLoader(rows, batch_size=3)  # two dict batches: the mean over them is the same
    ref = {"tuple": split_reference(), "list": [split_reference()], "dataloader": loader,
           "callable": split_reference}[form]
    t = make_trainer(tmp_path / form, other, estimator="ghost")
    t.reference = ref
    t.train()
    assert_same_params(trained(base), trained(other))


def test_model_loss_is_derived_and_refused_by_name(tmp_path):
    gpt = tiny()
    x = {"input_ids": torch.randint(1, V, (4, T)), "attention_mask": torch.ones(4, T, dtype=torch.long)}
    out = gpt(**x, labels=x["input_ids"])
    per_sample = model_loss_fn(gpt)(out.logits, x["input_ids"])
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample.mean(), out.loss)  # equal lengths: the mean of per-sample means
    bert = H.tiny_bert_classifier(num_labels=3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    out = bert(**x, labels=y)
    torch.testing.assert_close(model_loss_fn(bert)(out.logits, y).mean(), out.loss)
    with pytest.raises(LossNotDerivableError, match="Sequential.*pass loss_fn"):
        model_loss_fn(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    # loss_fn left out: the same training as with causal_lm_loss given
    a, b = tiny(), tiny()
    make_trainer(tmp_path / "given", a).train()
    t = CuratedTrainer(model=b, args=training_args(tmp_path / "derived"), train_dataset=Docs(),
                       reference=reference(), optimizers=(torch.optim.SGD(b.parameters(), lr=0.5), None))
    t.train()
    assert_same_params(trained(a), trained(b))


@pytest.mark.parametrize("estimator", ["lai", "ghost"])  # one pass and two passes
def test_index_key_with_default_training_arguments(tmp_path, estimator):
    model = tiny()
    args = training_args(tmp_path)
    assert args.remove_unused_columns  # the default, which drops 'id' unless curate keeps it
    t = CuratedTrainer(model=model, args=args, train_dataset=Docs(ids=True), reference=reference(), index_key="id",
                       estimator=estimator, optimizers=(torch.optim.SGD(model.parameters(), lr=0.5), None))
    t.train()
    ids = [i for r in t.curation_log for i in r["ids"]]
    assert sorted(ids) == list(range(N))  # two steps of 8 cover the 16 samples once
    for r in t.curation_log:
        assert len(r["dropped"]) == r["scored"] - r["kept"] and set(r["dropped"]) <= set(r["ids"])
    bad = CuratedTrainer(model=tiny(), args=training_args(tmp_path / "bad"), train_dataset=Docs(), estimator=estimator,
                         reference=reference(), index_key="id")
    with pytest.raises(IndexKeyError, match="remove_unused_columns=False"):
        bad.train()


def test_adam_aware_ghost_scores(tmp_path):
    """Under AdamW, Ghost's scores from the second step on are the Adam-preconditioned first-order change of the
    reference loss (influence.Session(optimizer=...)), not the SGD formula."""
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen, snapshot = [], {}

    def policy(scores):
        seen.append(scores.clone())
        return scores >= 0

    class Snapshot(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                snapshot["model"] = copy.deepcopy(model)
                snapshot["opt"] = copy.deepcopy(opt.state_dict())

    t = CuratedTrainer(model=model, args=training_args(tmp_path, lr=1e-2), train_dataset=Docs(ids=True),
                       reference=reference(), estimator="ghost", policy=policy, index_key="id",
                       optimizers=(opt, None), callbacks=[Snapshot()])
    t.train()
    assert [r["preconditioned"] for r in t.curation_log] == [False, True]
    m1 = snapshot["model"]
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2, weight_decay=0.0)
    o1.load_state_dict(snapshot["opt"])
    d = Docs()
    idx = torch.tensor(t.curation_log[1]["ids"])
    batch = ({"input_ids": d.x["input_ids"][idx], "attention_mask": d.x["attention_mask"][idx]}, d.y[idx])
    adam = influence.Session(m1, H.causal_lm_loss(), split_reference(), estimator="ghost", lr=1e-2,
                             optimizer=o1).score(batch).scores
    sgd = influence.ghost(m1, H.causal_lm_loss(), batch, split_reference(), lr=1e-2).scores
    torch.testing.assert_close(seen[1], adam, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(adam, sgd, rtol=0.1)  # the preconditioner changes the scores


def test_a_step_that_skipped_curation_raises(tmp_path):
    """A training loop that does not go through the curation hooks is an error, never silent training."""
    t = make_trainer(tmp_path / "two", tiny(), estimator="ghost")  # two passes: needs get_batch_samples
    t.get_batch_samples = lambda *a: transformers.Trainer.get_batch_samples(t, *a)  # a loop that skips the hook
    with pytest.raises(CurationNotAppliedError, match="not scored"):
        t.train()
    t = make_trainer(tmp_path / "one", tiny())  # one pass: the guard callback catches a bypassed compute_loss
    t.compute_loss = lambda m, i, r=False, **k: transformers.Trainer.compute_loss(t, m, i, r, **k)
    with pytest.raises(CurationNotAppliedError, match="optimizer step 1"):
        t.train()


def test_an_old_transformers_is_refused_at_import():
    class Old:
        __version__ = "4.45.2"
        Trainer = transformers.Trainer

    class NoHook:
        __version__ = "4.99.0"
        Trainer = type("Trainer", (), {})

    with pytest.raises(TransformersVersionError, match=f"transformers >= {MIN_TRANSFORMERS}"):
        check_transformers(Old)
    with pytest.raises(TransformersVersionError, match="get_batch_samples"):
        check_transformers(NoHook)
    check_transformers(transformers)  # the installed one passes
