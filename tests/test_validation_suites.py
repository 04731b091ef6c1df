"""Bound and fidelity suites on one scored step of tiny models, and the cost sweep on one point."""

import math
import types

import pytest
import torch

import influence
from validation.settings.profiles import get_profile, model_settings
from validation.suites import StepContext, bound_step, cost_point, fidelity_step
from validation.suites.fidelity import COMBINED, TARGETS
from validation.suites.runner import bound_context
from validation.training.task import build_task, cast_batch, scoring_copy, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(name: str, steps: int = 4) -> StepContext:
    s = model_settings(get_profile("tiny"), name)
    task = build_task(name, s, seed=0)
    ckpts = []
    model = train(task, lambda step, m: ckpts.append(({k: v.clone() for k, v in m.state_dict().items()}, s.lr)),
                  stops=[2, steps], progress=False)
    return StepContext(name, 0, steps, scoring_copy(model), task.loss_fn,
                       cast_batch(task.scored_batch(), torch.float64), cast_batch(task.ref, torch.float64), s.lr,
                       task.probe, task.is_noisy[task.probe], ckpts)


@pytest.fixture(scope="module")
def mlp_ctx():
    return _ctx("mlp")


@pytest.fixture(scope="module")
def lm_ctx():
    return _ctx("transformer")


def _fake_theory(scale: float, apriori: bool):
    """A stand-in theory: the decomposition from the estimators' own per-layer scores, bounds = scale * |error|."""
    def decomposition(model, loss_fn, train, ref, lr):
        g = influence.ghost(model, loss_fn, train, ref, lr).per_layer
        a = influence.lai(model, loss_fn, train, ref, lr).per_layer
        return {k: g[k] - a.get(k, torch.zeros_like(g[k])) for k in g}

    def data_bound(model, loss_fn, train, ref, lr):
        return scale * sum(decomposition(model, loss_fn, train, ref, lr).values()).abs()

    def apriori_bound(model, loss_fn, train, ref, lr):
        if not apriori:
            raise NotImplementedError("attention")
        return 2 * data_bound(model, loss_fn, train, ref, lr)

    def kendall_lower_bound(ghost, bounds):
        return -1.0

    return types.SimpleNamespace(decomposition=decomposition, data_bound=data_bound, apriori_bound=apriori_bound,
                                 kendall_lower_bound=kendall_lower_bound)


def test_fidelity_rows(mlp_ctx):
    out = fidelity_step(mlp_ctx, topk_fraction=0.25)
    names = mlp_ctx.estimators()
    assert "lai-aligned" not in names and {"exact", "ghost", "lai", "lai-last", "counterfactual", "loss"} <= set(names)
    fid = {(r["estimator"], r["target"]): r for r in out["fidelity"]}
    assert len(fid) == len(TARGETS) * (len(names) - 1)
    # the small-lr counterfactual is in the first-order regime: it ranks like Exact
    assert fid[("exact", "counterfactual_small_lr")]["spearman"] > 0.9
    # Ghost equals Exact in float64: identical rankings and signs
    g = fid[("ghost", "exact")]
    assert g["spearman"] == pytest.approx(1.0) and g["topk_overlap"] == 1.0 and g["sign_agreement"] == 1.0
    assert g["k"] == math.ceil(0.25 * mlp_ctx.n)
    # TracIn over the checkpoints so far: its last checkpoint is the current model, so it is Exact plus earlier terms
    assert not torch.allclose(mlp_ctx.scores("tracin"), mlp_ctx.scores("exact"))
    combined = [f"loss+{e}" for e in COMBINED if e in names and "loss" in names]  # the combined-rank detectors
    assert len(combined) == 2 and len(out["auroc"]) == len(names) + len(combined)
    assert {r["n_noisy"] for r in out["auroc"]} == {int(mlp_ctx.is_noisy.sum())}
    assert len(out["scores"]) == len(names) * mlp_ctx.n
    lai_rows = [r for r in out["scores"] if r["estimator"] == "lai"]
    assert [r["sample"] for r in lai_rows] == mlp_ctx.ids.tolist()
    assert torch.allclose(torch.tensor([r["score"] for r in lai_rows], dtype=torch.float64), mlp_ctx.scores("lai"))


def test_fidelity_on_a_language_model_scores_both_pairings(lm_ctx):
    out = fidelity_step(lm_ctx)
    est = {r["estimator"] for r in out["auroc"]}
    assert {"lai-aligned", "lai-last-aligned", "lai", "lai-last"} <= est
    last = {(r["estimator"], r["target"]): r["spearman"] for r in out["fidelity"]}
    assert last[("ghost", "exact")] == pytest.approx(1.0)


def test_loss_baseline_is_minus_the_loss(mlp_ctx):
    with torch.no_grad():
        loss = mlp_ctx.loss_fn(mlp_ctx.model(mlp_ctx.train[0]), mlp_ctx.train[1])
    assert torch.allclose(mlp_ctx.scores("loss"), -loss)


def test_bound_step_counts_violations_exactly(mlp_ctx):
    ok = bound_step(mlp_ctx, _fake_theory(1.0, apriori=True))  # bound == |error|: attained, no violation
    step = ok["bound_steps"][0]
    assert step["violations_data"] == 0 and step["violations_apriori"] == 0 and step["apriori_available"] == 1
    assert step["median_tightness_data"] == pytest.approx(1.0)
    assert step["median_tightness_apriori"] == pytest.approx(0.5)
    assert step["ghost_vs_exact_rel_err"] < 1e-10 and step["decomposition_rel_err"] < 1e-10
    assert step["kendall_bound_holds"] == 1
    errors = torch.tensor([r["error"] for r in ok["bound"]], dtype=torch.float64)
    assert torch.allclose(errors, mlp_ctx.scores("ghost") - mlp_ctx.scores("lai"))
    nonzero = int((errors.abs() > 1e-9 * mlp_ctx.scores("ghost").abs().max()).sum())
    tight = bound_step(mlp_ctx, _fake_theory(0.5, apriori=True))["bound_steps"][0]  # bound = |error| / 2
    assert tight["violations_data"] == nonzero and tight["violations_apriori"] == 0
    assert nonzero > 0
    # per-layer shares: one row per (sample, layer), summing to one per sample with a nonzero error
    shares = {}
    for r in ok["bound_layers"]:
        shares[r["sample"]] = shares.get(r["sample"], 0.0) + r["share"]
    assert all(v == pytest.approx(1.0) or v == 0.0 for v in shares.values())


def test_bound_step_records_missing_apriori_bound(lm_ctx):
    out = bound_step(lm_ctx, _fake_theory(1.0, apriori=False))
    step = out["bound_steps"][0]
    assert step["apriori_available"] == 0 and step["violations_apriori"] == 0
    assert step["median_tightness_apriori"] is None and all(r["apriori_bound"] is None for r in out["bound"])


def _real_theory():
    import theory

    return theory


def test_bound_step_with_the_theory_package(mlp_ctx):
    step = bound_step(mlp_ctx, _real_theory())["bound_steps"][0]
    assert step["data_available"] == 1 and step["apriori_available"] == 1
    assert step["violations_data"] == 0 and step["violations_apriori"] == 0
    assert step["decomposition_rel_err"] < 1e-8 and step["ghost_vs_exact_rel_err"] < 1e-8
    assert step["kendall_bound_holds"] == 1 and step["filter_bound_holds"] == 1
    assert 0 < step["median_tightness_data"] <= 1 and step["median_tightness_apriori"] <= step["median_tightness_data"]


def test_bound_step_on_the_transformer_sub_batch(lm_ctx):
    """The transformer's bound context (profile's bound_n_score/n_ref/seq_len); the data bound is skipped as in the
    quick profile (theory.data_bound's Jacobians are costly at a 256-byte vocabulary), the a-priori bound is n/a."""
    s = model_settings(get_profile("tiny"), "transformer")
    s.bound_n_score, s.bound_n_ref, s.bound_seq_len = 3, 2, 4
    sub = bound_context(lm_ctx, s)
    assert sub.train[0].shape == (3, 4) and sub.ref[1].shape == (2, 4) and sub.ids.tolist() == lm_ctx.ids[:3].tolist()
    out = bound_step(sub, _real_theory(), data_bound=False)
    step = out["bound_steps"][0]
    assert step["data_available"] == 0 and step["apriori_available"] == 0 and step["n"] == 3
    assert step["violations_data"] == 0 and step["decomposition_rel_err"] < 1e-8
    assert all(r["data_bound"] is None and r["violation_data"] is None for r in out["bound"])
    ghost = influence.ghost(sub.model, sub.loss_fn, sub.train, sub.ref, sub.lr).scores
    assert torch.allclose(torch.tensor([r["ghost"] for r in out["bound"]], dtype=torch.float64), ghost)


def test_cost_point_rows():
    s = model_settings(get_profile("tiny"), "mlp")
    task = build_task("mlp", s, seed=0)
    rows = cost_point(task, width=8, batch=8, repeats=1, warmup=0, estimators=("lai", "ghost"))
    by = {r["estimator"]: r for r in rows}
    assert {"train_step", "forward", "lai", "ghost"} <= set(by)
    assert by["train_step"]["ratio_to_train_step"] == pytest.approx(1.0)
    assert by["train_step"]["peak_ratio_to_train_step"] == pytest.approx(1.0)
    assert all(r["width"] == 8 and r["batch"] == 8 and r["median_s"] > 0 for r in rows)
    assert by["lai"]["n_params"] == 40 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10


# ------------------------------------------------------------------------------------ lai-fit and layer terms

def test_weighted_lai_spans_last_layer_and_all_layer_lai(mlp_ctx):
    from validation.suites.lai_variants import last_layer_name, weighted_lai

    lai = mlp_ctx.result("lai")
    last = last_layer_name(mlp_ctx.result("lai-last"))
    lower = [k for k in lai.per_layer if k != last]
    ones, zeros = {k: 1.0 for k in lower}, {k: 0.0 for k in lower}
    assert torch.allclose(weighted_lai(lai, ones), mlp_ctx.scores("lai"), rtol=1e-10, atol=0)
    assert torch.allclose(weighted_lai(lai, zeros), mlp_ctx.scores("lai-last"), rtol=1e-10, atol=1e-300)


def test_fit_layer_weights_minimises_the_probe_error(mlp_ctx):
    """In-sample, the joint least-squares weights (tiny ridge) fit Ghost's lower-layer sum at least as well as
    all-layer (w = 1) and last-layer (w = 0) LAI on the same probe and reference chunks."""
    from validation.suites.lai_variants import fit_layer_weights, weighted_lai

    m, f, tr, rf, lr = mlp_ctx.model, mlp_ctx.loss_fn, mlp_ctx.train, mlp_ctx.ref, mlp_ctx.lr
    w = fit_layer_weights(m, f, tr, rf, lr, ref_chunks=1, ridge=0.0)
    lai = influence.lai(m, f, tr, rf, lr)
    ghost = influence.ghost(m, f, tr, rf, lr).scores
    err = lambda weights: float(((weighted_lai(lai, weights) - ghost) ** 2).sum())  # noqa: E731
    assert err(w) <= err({k: 1.0 for k in w}) * (1 + 1e-9) and err(w) <= err({k: 0.0 for k in w}) * (1 + 1e-9)
    assert set(w) == {k for k in lai.per_layer if k != "head"}
    per = fit_layer_weights(m, f, tr, rf, lr, ref_chunks=2, fit="per_layer")
    shared = fit_layer_weights(m, f, tr, rf, lr, ref_chunks=2, fit="shared")
    assert set(per) == set(w) and len(set(shared.values())) == 1
    with pytest.raises(ValueError, match="fit must be"):
        fit_layer_weights(m, f, tr, rf, lr, fit="best")


def test_fidelity_scores_lai_fit_and_layer_terms(mlp_ctx):
    from validation.suites.runner import fit_probe_batch

    s = model_settings(get_profile("tiny"), "mlp")
    task = build_task("mlp", s, seed=0)
    px, py = fit_probe_batch(task, 4, 6)
    scored = {tuple(r) for r in task.scored_batch()[0].tolist()}
    assert len(py) == 6 and not scored & {tuple(r) for r in px.tolist()}  # the probe is outside the scored batch
    assert torch.equal(fit_probe_batch(task, 4, 6)[0], px) and not torch.equal(fit_probe_batch(task, 5, 6)[0], px)
    ctx = StepContext(mlp_ctx.model_name, 0, mlp_ctx.step, mlp_ctx.model, mlp_ctx.loss_fn, mlp_ctx.train, mlp_ctx.ref,
                      mlp_ctx.lr, mlp_ctx.ids, mlp_ctx.is_noisy, mlp_ctx.checkpoints,
                      fit_probe=cast_batch((px, py), torch.float64), fit_ref_chunks=2)
    out = fidelity_step(ctx)
    assert "lai-fit" in {r["estimator"] for r in out["auroc"]} and "lai-fit" not in mlp_ctx.estimators()
    rows = {r["layer"]: r for r in out["layer_terms"]}
    assert set(rows) == set(ctx.result("ghost").per_layer)
    assert rows["head"]["is_last"] == 1 and rows["head"]["error_share"] < 1e-12 and rows["head"]["rho_alone"] == 1.0
    assert rows["head"]["rho_fixed"] == pytest.approx(fid_spearman(ctx, "lai", "ghost"))
    assert sum(r["error_share"] for r in rows.values()) == pytest.approx(1.0)
    assert {k: r["fit_weight"] for k, r in rows.items() if k != "head"} == ctx.fit_weights()
    lai_fit = torch.tensor([r["score"] for r in out["scores"] if r["estimator"] == "lai-fit"], dtype=torch.float64)
    assert torch.allclose(lai_fit, ctx.scores("lai-fit"))


def fid_spearman(ctx, a, b):
    from validation.suites.metrics import spearman

    return spearman(ctx.scores(a), ctx.scores(b))


def test_combined_rank_detector_keeps_small_losses_and_high_scores():
    """loss+<e> ranks like curation's combined rank: a sample with a small loss and a high score ranks high, so
    -rank detects the noisy labels where the loss does (the ``loss`` estimator scores -l_i)."""
    from sklearn.metrics import roc_auc_score

    from validation.suites.fidelity import combined_ranks
    from validation.suites.metrics import noisy_auroc

    g = torch.Generator().manual_seed(0)
    noisy = torch.zeros(40, dtype=torch.bool)
    noisy[:10] = True
    losses = torch.rand(40, generator=g, dtype=torch.float64) + 2.0 * noisy  # noisy samples have large losses
    scores = {"loss": -losses, "lai-last": torch.randn(40, generator=g, dtype=torch.float64), "lai": -losses}
    combined = combined_ranks(scores)
    assert set(combined) == {"loss+lai", "loss+lai-last"}
    assert noisy_auroc(noisy, combined["loss+lai"]) == pytest.approx(1.0)  # both halves rank the noisy low
    auc = noisy_auroc(noisy, combined["loss+lai-last"])
    assert auc == pytest.approx(roc_auc_score(noisy.numpy(), -combined["loss+lai-last"].numpy())) and auc > 0.7
    assert combined_ranks({"lai": scores["lai"]}) == {}
