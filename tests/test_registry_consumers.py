"""A toy estimator registered from this file appears in every consumer of the registry with no other edit:
``lai run --estimators`` and the fidelity suite's selection, ``lai bench --estimators`` and its default rows,
``lai score``, the report's estimator tables and figure 2's legend (with a colour of its own)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from influence.estimators import BaseBackend, Capabilities, Estimator, register_estimator, unregister_estimator
from influence.result import Chunk

TOY = "toy-norm"
LABEL = "Toy (input norm)"


class ToyBackend(BaseBackend):
    """Scores = the squared norm of each training input (a simple function, no gradient)."""

    estimator = TOY

    def __init__(self, model, loss_fn, settings, routed=None):
        self.model, self.loss_fn, self.lr = model, loss_fn, settings.lr

    def start(self, n_train, pairwise, streamed):
        return None

    def add_reference(self, batch, n):
        return {}

    def score(self, batch, n, self_reference=False, keep_graph=False):
        x = batch[0]
        losses = self.loss_fn(self.model(x), batch[1]).detach()
        return Chunk({"toy": x.reshape(len(x), -1).pow(2).sum(1)}, losses)

    def self_products(self, batch, n):
        x = batch[0]
        return self.lr * x.reshape(len(x), -1).pow(2).sum(1) ** 2


@pytest.fixture
def toy():
    register_estimator(Estimator(TOY, LABEL, ToyBackend, Capabilities(needs_backward=False), family="toy",
                                 description="test-only: squared input norm"))
    try:
        yield TOY
    finally:
        unregister_estimator(TOY)


def _help(module, prog: str) -> str:
    return module.build_parser(prog).format_help()


def test_lai_run_lists_and_accepts_it(toy):
    from validation.suites import command as run
    from validation.suites.context import fidelity_estimators

    assert toy in _help(run, "lai run")
    args = run.build_parser().parse_args(["--profile", "tiny", "--estimators", f"{toy},ghost"])
    config = run.make_config(args)
    assert config["estimators"] == [toy, "ghost"]
    assert fidelity_estimators(config["estimators"], sequence=False, fit=False) == [
        "exact", "ghost", toy, "loss", "counterfactual", "counterfactual_small_lr"]
    assert toy in fidelity_estimators(sequence=False)  # the default: every registered estimator


def test_lai_bench_and_lai_score_list_it(toy):
    from validation.bench import command as bench
    from validation.bench import score
    from validation.settings import estimators as chosen

    assert toy in _help(bench, "lai bench") and toy in chosen.timed()  # the default rows time it
    assert toy in _help(score, "lai score") and toy in score.choices()


def _fidelity_run(tmp_path, names):
    from validation.report.results import RunDir

    rd = RunDir(tmp_path / "run")
    rd.init({"profile": "test", "seeds": [0], "device": "cpu", "models": {}})
    rng = np.random.default_rng(0)
    n = 24
    noisy = np.zeros(n, dtype=bool)
    noisy[:6] = True
    for step in (10, 20):
        exact = rng.normal(size=n)
        scores = {e: exact + 0.2 * rng.normal(size=n) for e in names}
        scores["exact"] = exact
        rows = [{"model": "mlp", "seed": 0, "step": step, "sample": i, "is_noisy": int(noisy[i]), "estimator": e,
                 "score": float(v[i])} for e, v in scores.items() for i in range(n)]
        fid = [{"model": "mlp", "seed": 0, "step": step, "estimator": e, "target": "exact", "n": n, "k": 3,
                "spearman": 0.9, "kendall": 0.8, "topk_overlap": 1.0, "bottomk_overlap": 1.0, "sign_agreement": 1.0}
               for e in names]
        rd.write_unit("fidelity", "mlp", f"step{step}", {"tables": {"scores": rows, "fidelity": fid}}, 0)
    return rd


def test_the_report_shows_it(toy, tmp_path):
    from validation.report.summary import write_report

    rd = _fidelity_run(tmp_path, ["ghost", "lai", toy])
    summary = write_report(rd)
    assert toy in summary["spearman_vs_exact"]["mlp"] and toy in summary["evidence"]["spearman"]["mlp"]
    text = (rd.root / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model |") and toy in line)
    assert toy in [c.strip() for c in header.strip("|").split("|")]  # a column of the estimator tables
    assert f"{LABEL} " in text  # the ranking line names it by its registry label


def test_figure_2_draws_it_with_a_colour_of_its_own(toy):
    from paper_figs import fig2_fidelity
    from paper_figs.style import estimator_style, estimator_styles
    from validation.report.tables import Table

    rows = [{"model": "mlp", "seed": s, "step": step, "estimator": e, "target": "exact", "spearman": 0.5 + 0.1 * s}
            for s in (0, 1) for step in (10, 20) for e in ("ghost", "lai", "lai-last", "tracin", toy)]
    fig = fig2_fidelity.figure(Table(rows))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert LABEL in labels
    styles = estimator_styles()
    colours = [styles[e][1] for e in ("ghost", "lai", "lai-last", "lai-fit", "tracin", "tracin-last", toy)]
    assert len(set(colours)) == len(colours)  # every entry its own colour (the LAI variants too)
    assert estimator_style(toy)[0] == LABEL


def test_the_fidelity_suite_scores_it(toy, f64):
    import influence
    from validation.suites.context import StepContext
    from validation.suites.fidelity import fidelity_step
    from validation.training.models import MLP

    torch.manual_seed(0)
    model = MLP(6, (5,), 3).double().eval()
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    ctx = StepContext("mlp", 0, 1, model, influence.cross_entropy, (x[:8], y[:8]), (x[8:], y[8:]), 0.1,
                      torch.arange(8), torch.zeros(8, dtype=torch.bool), [(model.state_dict(), 0.1)],
                      selected=["ghost", "lai", "lai-last", toy])
    tables = fidelity_step(ctx)
    got = [r for r in tables["scores"] if r["estimator"] == toy]
    assert [r["score"] for r in got] == pytest.approx(x[:8].pow(2).sum(1).tolist())
    assert any(r["estimator"] == toy and r["target"] == "exact" for r in tables["fidelity"])
