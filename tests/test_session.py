"""The public scoring session (float64): reference statistics from a list of batches or a DataLoader equal one
concatenated batch; one session scores many batches as the functions do; refresh_every recomputes the reference at
the current weights; self-influence and within-batch pairwise products equal the pairwise estimators; Ghost with a
preconditioner equals Exact with it; curation imports only the package's public modules."""

import ast
import pathlib
import warnings

import pytest
import torch
from conftest import rel_err
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import influence

CE = influence.cross_entropy
TOL = 1e-10


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4)).double()
    data = lambda n: (torch.randn(n, 6, generator=g, dtype=torch.float64),  # noqa: E731
                      torch.randint(0, 4, (n,), generator=g))
    return model, data(10), data(12)


def seq_setup(seed=0):
    """A token model: embedding + Linear over positions, outputs [n, T, V] (Gram and contracted forms differ)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(11, 5), nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 11)).double()
    data = lambda n: (torch.randint(0, 11, (n, 4), generator=g), torch.randint(0, 11, (n, 4), generator=g))  # noqa
    return model, data(6), data(9)


KINDS = [("ghost", {}), ("lai", {}), ("lai-last", {}), ("exact", {})]


@pytest.mark.parametrize("estimator,opts", KINDS)
@pytest.mark.parametrize("make", [setup, seq_setup])
def test_reference_from_batches_or_loader_equals_one_batch(estimator, opts, make):
    model, train, ref = make()
    one = influence.Session(model, CE, ref, estimator=estimator, lr=0.1, **opts).score(train)
    parts = [(ref[0][:5], ref[1][:5]), (ref[0][5:], ref[1][5:])]
    listed = influence.Session(model, CE, parts, estimator=estimator, lr=0.1, **opts).score(train)
    loader = DataLoader(TensorDataset(*ref), batch_size=4, shuffle=True)
    loaded = influence.Session(model, CE, loader, estimator=estimator, lr=0.1, **opts).score(train)
    for r in (listed, loaded):
        assert rel_err(r.scores, one.scores) < TOL
        for k in one.per_layer:
            assert rel_err(r.per_layer[k], one.per_layer[k]) < TOL, k


@pytest.mark.parametrize("estimator", ["ghost", "lai", "exact"])
def test_pairwise_over_several_reference_batches_keeps_every_column(estimator):
    model, train, ref = seq_setup()
    one = influence.Session(model, CE, ref, estimator=estimator, lr=0.1, pairwise=True).score(train)
    parts = [(ref[0][:4], ref[1][:4]), (ref[0][4:], ref[1][4:])]
    listed = influence.Session(model, CE, parts, estimator=estimator, lr=0.1, pairwise=True).score(train)
    assert listed.pairwise.shape == (6, 9)
    assert rel_err(listed.pairwise, one.pairwise) < TOL


@pytest.mark.parametrize("estimator,fn", [("ghost", influence.ghost), ("lai", influence.lai),
                                          ("exact", influence.exact)])
def test_one_session_scores_many_batches_as_the_functions_do(estimator, fn):
    model, _, ref = setup()
    s = influence.Session(model, CE, ref, estimator=estimator, lr=0.1)
    for seed in range(3):
        _, train, _ = setup(seed + 1)
        assert rel_err(s.score(train).scores, fn(model, CE, train, ref, lr=0.1).scores) < TOL


def test_refresh_every_recomputes_the_reference_at_the_current_weights():
    model, train, ref = setup()
    s = influence.Session(model, CE, ref, estimator="ghost", lr=0.1, refresh_every=2)
    stale = influence.Session(model, CE, ref, estimator="ghost", lr=0.1)
    s.score(train)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    fresh = influence.ghost(model, CE, train, ref, lr=0.1).scores
    second = s.score(train).scores  # still the statistics of the first weights (refreshed every 2 calls)
    assert rel_err(second, stale.score(train).scores) < TOL and rel_err(second, fresh) > 1e-3
    third = s.score(train).scores  # the third call refreshes first
    assert rel_err(third, fresh) < TOL


@pytest.mark.parametrize("estimator", ["ghost", "lai", "exact"])
def test_self_influence_and_within_batch_pairwise(estimator):
    model, train, _ = seq_setup()
    s = influence.Session(model, CE, train, estimator=estimator, lr=0.1)
    pw = influence.Session(model, CE, train, estimator=estimator, lr=0.1, pairwise=True).score(train).pairwise
    assert rel_err(s.self_influence(train), pw.diagonal()) < TOL
    assert rel_err(s.pairwise_within(train), pw) < TOL
    if estimator != "exact":
        r = s.score(train)
        assert rel_err(r.pairwise_within(), pw) < TOL
        assert rel_err(r.self_products(), pw.diagonal()) < TOL


def test_ref_none_scores_each_batch_against_itself():
    model, train, _ = seq_setup()
    for est in ("ghost", "lai"):
        s = influence.Session(model, CE, None, estimator=est, lr=0.1)
        want = influence.Session(model, CE, train, estimator=est, lr=0.1).score(train).scores
        assert rel_err(s.score(train).scores, want) < TOL


def test_ghost_with_a_preconditioner_equals_exact_with_it():
    model, train, ref = seq_setup()
    g = torch.Generator().manual_seed(3)
    P = {k: torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.1 for k, p in model.named_parameters()}
    ex = influence.exact(model, CE, train, ref, lr=0.1, preconditioner=P)
    gh = influence.ghost(model, CE, train, ref, lr=0.1, preconditioner=P)
    plain = influence.ghost(model, CE, train, ref, lr=0.1)
    assert rel_err(gh.scores, ex.scores) < TOL and rel_err(plain.scores, ex.scores) > 1e-3
    with pytest.raises(influence.InfluenceError, match="preconditioner"):
        influence.Session(model, CE, ref, estimator="lai", lr=0.1, preconditioner=P)


def test_adam_optimizer_preconditions_ghost_and_warns_for_lai():
    model, train, ref = setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        CE(model(train[0]), train[1]).mean().backward()
        opt.step()
    want = influence.exact(model, CE, train, ref, lr=0.1,
                           preconditioner=influence.adam_preconditioner(opt, model)).scores
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = influence.Session(model, CE, ref, estimator="ghost", lr=0.1, optimizer=opt).score(train).scores
    assert rel_err(got, want) < TOL
    with pytest.warns(influence.OptimizerWarning, match="SGD formula"):
        influence.Session(model, CE, ref, estimator="lai", lr=0.1, optimizer=opt)


def test_tracin_session_and_dataset_scoring(tmp_path):
    model, train, ref = setup()
    ckpts = [({k: v.clone() * (1 + 0.1 * i) for k, v in model.state_dict().items()}, 0.1 / (i + 1))
             for i in range(2)]
    want = influence.tracin(model, CE, train, ref, ckpts).scores
    s = influence.Session(model, CE, ref, estimator="tracin", checkpoints=ckpts)
    assert rel_err(s.score(train).scores, want) < TOL
    ds = influence.score_dataset(s, train, batch_size=3, out=tmp_path, progress=False)
    assert rel_err(ds.scores, want) < TOL
    assert ds.lr == pytest.approx(0.1 + 0.05)


def test_session_resumes_dataset_scoring_only_with_its_own_fingerprint(tmp_path):
    model, train, ref = setup()
    s = influence.Session(model, CE, ref, estimator="lai", lr=0.1)
    influence.score_dataset(s, train, batch_size=4, out=tmp_path, progress=False)
    with torch.no_grad():
        model[2].bias.add_(0.5)
    with pytest.raises(influence.dataset.ResumeMismatchError, match="fingerprint"):
        influence.score_dataset(influence.Session(model, CE, ref, estimator="lai", lr=0.1), train, batch_size=4,
                                out=tmp_path, progress=False)


def test_bad_session_arguments_are_named():
    model, train, ref = setup()
    with pytest.raises(ValueError, match="estimator"):
        influence.Session(model, CE, ref, estimator="nope", lr=0.1)
    with pytest.raises(influence.InvalidArgumentError, match="lr must be"):
        influence.Session(model, CE, ref, estimator="ghost")
    with pytest.raises(influence.InfluenceError, match="checkpoints"):
        influence.Session(model, CE, ref, estimator="tracin")
    with pytest.raises(influence.InfluenceError, match="refresh_every"):
        influence.Session(model, CE, ref, estimator="ghost", lr=0.1, refresh_every=0)
    with pytest.raises(influence.InfluenceError, match="no batch"):
        influence.Session(model, CE, [], estimator="ghost", lr=0.1)


PUBLIC = {"influence", "influence.batch", "influence.losses", "influence.errors", "influence.atomic",
          "influence.hf", "influence.optim", "influence.dataset", "influence.estimators", "influence.compat"}


def test_curation_imports_only_the_public_api():
    """The curation library (influence.curation) and its experiment harness (validation.curation) score through the
    public API only (the harness also through the library)."""
    root = pathlib.Path(__file__).parent.parent
    seen = set()
    for path in [*(root / "validation" / "curation").glob("*.py"), *(root / "influence" / "curation").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "influence":
                    seen.add(name)
                    assert name in PUBLIC or name.startswith("influence.curation"), \
                        f"{path.name} imports {name}, not a public module of influence"
    assert "influence" in seen
