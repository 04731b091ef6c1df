"""Curation reads its methods from the estimator registry: a toy estimator registered here (and unregistered after
each test) is a ``keep score >= 0`` method of ``influence.curation``, a ``lai curate --methods`` choice (in ``--help``
and ``--list``), a Trainer estimator and a staleness estimator, with no other edit; a token-sequence estimator is
refused on a classification task. Training with it needs ``influence.Session`` to build registry backends."""

import pytest
import torch

import influence
from influence.curation import METHODS, curation_step, get_method, method_table, signals
from influence.estimators import (
    BaseBackend,
    Capabilities,
    Estimator,
    estimator_names,
    register_estimator,
    unregister_estimator,
)
from influence.result import Chunk

CE = influence.cross_entropy
LR = 0.1
TOY, SEQ = "toy-loss", "toy-seq"


class ToyLossBackend(BaseBackend):
    """score_i = lr * (mean reference loss - l_i): positive for the samples the model fits better than the reference
    (a backend of the registry's protocol: start, add_reference, score -> Chunk)."""

    estimator = TOY

    def __init__(self, model, loss_fn, lr):
        self.model, self.loss_fn, self.lr, self.routed = model, loss_fn, lr, {}

    def routed_names(self):
        return []

    def _losses(self, batch):
        with torch.no_grad():
            return self.loss_fn(self.model(batch[0]), batch[1])

    def start(self, n_train, pairwise, streamed):
        self.ref_losses = []

    def add_reference(self, batch, n):
        self.ref_losses.append(self._losses(batch))
        return {}

    def self_products(self, batch, n):
        return self.lr * self._losses(batch) ** 2

    def score(self, batch, n, self_reference=False, keep_graph=False):
        losses = self._losses(batch)
        return Chunk({"toy": self.lr * (torch.cat(self.ref_losses).mean() - losses)}, losses)


def build_toy(model, loss_fn, settings, routed=None):
    return ToyLossBackend(model, loss_fn, float(settings.lr))


@pytest.fixture
def toy():
    register_estimator(Estimator(TOY, "Toy loss", build=build_toy, caps=Capabilities(needs_backward=False)))
    register_estimator(Estimator(SEQ, "Toy (sequences)", build=build_toy,
                                 caps=Capabilities(needs_backward=False, sequence_only=True)))
    yield TOY
    unregister_estimator(TOY)
    unregister_estimator(SEQ)


def _data(n=16, n_ref=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(n, 10, generator=g), torch.randint(0, 5, (n,), generator=g)),
            (torch.randn(n_ref, 10, generator=g), torch.randint(0, 5, (n_ref,), generator=g)))


def test_every_registered_estimator_is_a_threshold_method():
    """Influence estimators keep score >= 0; rankings (their sign means nothing) keep a rate-matched top k."""
    for name in estimator_names(influence=True):
        m = get_method(name)
        assert (m.signal, m.policy, m.threshold) == (name, "threshold", 0.0) and m.needs_reference
    for name in set(estimator_names(influence=False)) - {"loss"}:  # loss: the small-loss baselines' signal
        m = get_method(name)
        assert (m.signal, m.policy) == (name, "top_k") and m.rate_matched
    assert list(METHODS)[0] == "vanilla" and set(estimator_names(influence=True)) <= set(METHODS)


def test_a_registered_toy_is_a_method_everywhere_and_gone_after(toy, capsys):
    from validation.curation import cli
    assert TOY in METHODS and TOY in method_table() and TOY in signals()
    m = get_method(TOY)
    assert (m.signal, m.policy, m.needs_reference, m.sequence_only) == (TOY, "threshold", True, False)
    assert get_method(SEQ).sequence_only
    help_text = "".join(cli.build_parser().format_help().split())  # (argparse may wrap at the hyphen)
    assert TOY in help_text and SEQ in help_text
    assert cli.main(["--list"]) == 0
    assert TOY in capsys.readouterr().out
    from validation import staleness
    assert TOY in "".join(staleness.build_parser("staleness").format_help().split())
    unregister_estimator(TOY)
    assert TOY not in METHODS and TOY not in signals()
    with pytest.raises(ValueError, match="unknown method"):
        get_method(TOY)


def test_a_registered_toy_is_a_trainer_estimator(toy):
    pytest.importorskip("transformers")
    import influence.hf_trainer as hf_trainer
    assert TOY in hf_trainer.ESTIMATORS and "tracin" not in hf_trainer.ESTIMATORS


def test_a_sequence_estimator_is_refused_on_a_classification_task(toy, tmp_path):
    from validation.curation import cli
    from validation.curation.experiment import check_methods
    from validation.curation.tasks import get_task
    with pytest.raises(ValueError, match=SEQ):
        check_methods(get_task("mnist1d-noisy40"), ["vanilla", SEQ])
    check_methods(get_task("lm-pretrain"), ["vanilla", SEQ])  # a token-sequence task takes it
    with pytest.raises(SystemExit) as exc:
        cli.main(["--task", "mnist1d-noisy40", "--methods", f"vanilla,{SEQ}", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_a_curation_step_trains_with_the_toy(toy):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batch, ref = _data()
    with torch.no_grad():
        want = LR * (CE(model(ref[0]), ref[1]).mean() - CE(model(batch[0]), batch[1]))
    before = [p.detach().clone() for p in model.parameters()]
    info = curation_step(model, CE, opt, batch, ref, TOY, on_empty="best")
    torch.testing.assert_close(info.values, want)
    assert torch.equal(info.kept, want >= 0) or info.fallback == "best"
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_lai_curate_runs_the_toy(toy, tmp_path, capsys):
    from validation.curation import cli
    argv = ["--task", "mnist1d-noisy40", "--methods", f"vanilla,{TOY}", "--seeds", "0", "--epochs", "1",
            "--max-train", "64", "--timing-steps", "0", "--out", str(tmp_path), "--quiet", "--no-progress"]
    assert cli.main(argv) == 0
    assert f"| {TOY} |" in capsys.readouterr().out
