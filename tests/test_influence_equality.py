"""Ghost == Exact, LAI(last) == Exact(head), TracIn == Exact at checkpoints: float64, rel 1e-8 or tighter."""

import pytest
import torch
from conftest import rel_err
from torch import nn
from torch.nn import functional as F

import influence
from validation.training.models import MLP, CausalTransformer, CNN1d, CNN2d

TOL = 1e-8
CE = influence.cross_entropy


def make_case(name: str, n_train: int = 5, n_ref: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    n = n_train + n_ref
    if name == "mlp":
        model, x, y = MLP(10, (16, 12), 5), torch.randn(n, 10), torch.randint(0, 5, (n,))
    elif name == "cnn2d":
        model, x, y = CNN2d(8, 10), torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))
    elif name == "cnn1d":
        model, x, y = CNN1d(40, 6, 10), torch.randn(n, 40), torch.randint(0, 10, (n,))
    elif name == "transformer":
        model = CausalTransformer(vocab_size=23, d_model=16, n_layers=2, n_heads=2, max_len=12)
        x, y = torch.randint(0, 23, (n, 9)), torch.randint(0, 23, (n, 9))
        x[0, :4] = 7  # repeated ids inside one sample
    else:
        raise KeyError(name)
    model.eval()
    return model, (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


MODELS = ["mlp", "cnn2d", "cnn1d", "transformer"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["gram", "materialize", "auto"])
def test_ghost_equals_exact(f64, name, mode):
    model, train, ref = make_case(name)
    ex = influence.exact(model, CE, train, ref, lr=0.1)
    gh = influence.ghost(model, CE, train, ref, lr=0.1, mode=mode)
    assert rel_err(gh.scores, ex.scores) < TOL
    assert set(gh.per_layer) == set(ex.per_layer)
    for k in ex.per_layer:
        assert rel_err(gh.per_layer[k], ex.per_layer[k]) < TOL, k
    assert torch.allclose(sum(gh.per_layer.values()), gh.scores, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["gram", "materialize"])
def test_ghost_pairwise_equals_exact(f64, name, mode):
    model, train, ref = make_case(name)
    ex = influence.exact(model, CE, train, ref, lr=0.3, pairwise=True)
    gh = influence.ghost(model, CE, train, ref, lr=0.3, pairwise=True, mode=mode)
    assert gh.pairwise.shape == (5, 4)
    assert rel_err(gh.pairwise, ex.pairwise) < TOL
    assert rel_err(gh.scores, ex.pairwise.mean(1)) < TOL
    for k in ex.per_layer_pairwise:
        assert rel_err(gh.per_layer_pairwise[k], ex.per_layer_pairwise[k]) < TOL, k


def naive_scores(model, loss_fn, train, ref, lr):
    """Independent reference: per-sample autograd.grad in a Python loop, dotted with the mean-ref gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    ref_loss = loss_fn(model(ref[0]), ref[1]).mean()
    ref_grad = torch.autograd.grad(ref_loss, params)
    out = []
    for i in range(train[1].shape[0]):
        li = loss_fn(model(train[0][i:i + 1]), train[1][i:i + 1])[0]
        gi = torch.autograd.grad(li, params)
        out.append(lr * sum((a * b).sum() for a, b in zip(gi, ref_grad)))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_exact_matches_naive_autograd_loop(f64, name):
    model, train, ref = make_case(name)
    ex = influence.exact(model, CE, train, ref, lr=0.05, chunk_size=2)
    assert rel_err(ex.scores, naive_scores(model, CE, train, ref, 0.05)) < 1e-10


def test_reference_aggregation_per_sample_not_summed_factors(f64):
    """Pitfall 1: mean_v a_v (x) b_v, not (sum_v a_v) (x) (sum_v b_v); checked on a biased head."""
    model, train, ref = make_case("mlp", n_ref=3)
    ex = influence.exact(model, CE, train, ref, lr=1.0)
    gh = influence.ghost(model, CE, train, ref, lr=1.0, mode="materialize")
    assert rel_err(gh.per_layer["head"], ex.per_layer["head"]) < TOL
    # the buggy aggregation differs substantially on the same data
    acts = {}
    model.head.register_forward_hook(lambda m, a, o: acts.update(a=a[0]))
    f = model(ref[0])
    g = torch.autograd.grad(CE(f, ref[1]).sum(), f)[0]
    a_aug = torch.cat([acts["a"], torch.ones(3, 1)], 1)
    wrong = torch.outer(g.sum(0), a_aug.sum(0)) / 3
    right = torch.einsum("vc,vp->cp", g, a_aug) / 3
    assert (wrong - right).norm() > 0.1 * right.norm()


@pytest.mark.parametrize("name", ["mlp", "cnn2d", "cnn1d", "transformer"])
def test_lai_last_layer_exact(f64, name):
    model, train, ref = make_case(name)
    ex_head = influence.exact(model, CE, train, ref, lr=0.2, params=["head.weight", "head.bias"])
    gh = influence.ghost(model, CE, train, ref, lr=0.2)
    for mode in ("gram", "materialize"):
        lai = influence.lai(model, CE, train, ref, lr=0.2, layers="last", mode=mode)
        assert list(lai.per_layer) == ["head"]
        assert rel_err(lai.scores, ex_head.scores) < TOL
        assert rel_err(lai.scores, gh.per_layer["head"]) < TOL


def test_lai_equals_ghost_equals_exact_for_softmax_regression(f64):
    torch.manual_seed(1)
    model = nn.Linear(7, 4).eval()
    x, y = torch.randn(9, 7), torch.randint(0, 4, (9,))
    train, ref = (x[:6], y[:6]), (x[6:], y[6:])
    ex = influence.exact(model, CE, train, ref, lr=0.5)
    gh = influence.ghost(model, CE, train, ref, lr=0.5)
    la = influence.lai(model, CE, train, ref, lr=0.5)
    assert rel_err(gh.scores, ex.scores) < TOL and rel_err(la.scores, ex.scores) < TOL


def test_lai_all_layers_matches_formula(f64):
    """LAI_i = lr mean_v (g_i.g_v) sum_l (a_i.a_v + 1), computed here independently with hooks."""
    model, train, ref = make_case("mlp")
    acts = {}
    layers = [*model.hidden, model.head]
    hooks = [m.register_forward_hook(lambda m, a, o, k=k: acts.update({k: a[0]})) for k, m in
             enumerate(layers)]
    x = torch.cat([train[0], ref[0]])
    f = model(x)
    for h in hooks:
        h.remove()
    g = torch.softmax(f, -1) - F.one_hot(torch.cat([train[1], ref[1]]), 5)
    gg = g[:5] @ g[5:].T
    aa = sum(acts[k][:5] @ acts[k][5:].T + 1 for k in range(3))
    expected = 0.1 * (gg * aa).mean(1)
    for mode in ("gram", "materialize"):
        got = influence.lai(model, CE, train, ref, lr=0.1, mode=mode)
        assert rel_err(got.scores, expected) < 1e-12


def test_lai_token_pairings(f64):
    """Pitfall 10: all_pairs is exact on the last layer, aligned is not; aligned matches its own formula."""
    model, train, ref = make_case("transformer")
    ex_head = influence.exact(model, CE, train, ref, lr=1.0, params=["head.weight", "head.bias"])
    allp = influence.lai(model, CE, train, ref, lr=1.0, layers="last", token_pairing="all_pairs")
    alig = influence.lai(model, CE, train, ref, lr=1.0, layers="last", token_pairing="aligned")
    assert rel_err(allp.scores, ex_head.scores) < TOL
    assert rel_err(alig.scores, ex_head.scores) > 1e-3
    # aligned: (sum_t g_it.g_vt) * (sum_t a_it.a_vt + T) with the head's input a = ln_f output
    acts = {}
    h = model.head.register_forward_hook(lambda m, a, o: acts.update(a=a[0]))
    f = model(torch.cat([train[0], ref[0]]))
    h.remove()
    losses = CE(f, torch.cat([train[1], ref[1]]))
    g = torch.autograd.grad(losses.sum(), f)[0]
    a = torch.cat([acts["a"], torch.ones(*acts["a"].shape[:2], 1)], -1)
    gg = torch.einsum("itc,vtc->iv", g[:5], g[5:])
    aa = torch.einsum("itp,vtp->iv", a[:5], a[5:])
    assert rel_err(alig.scores, (gg * aa).mean(1)) < 1e-12


def test_lai_has_no_backward_pass(f64):
    """Once the model's verification verdict for these input shapes is cached (the first LAI or Ghost call
    computes it with one backward), LAI runs no backward pass."""
    model, train, ref = make_case("mlp")
    influence.lai(model, CE, train, ref, lr=0.1)
    calls = []
    model.hidden[0].register_full_backward_hook(lambda *a: calls.append(1))
    influence.lai(model, CE, train, ref, lr=0.1)
    assert not calls
    influence.ghost(model, CE, train, ref, lr=0.1)
    assert calls  # the hook itself works


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_tracin_single_and_several_checkpoints(f64, name, tmp_path):
    model, train, ref = make_case(name)
    states, lrs = [], [0.1, 0.05, 0.02]
    for k in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        states.append({k2: v.clone() for k2, v in model.state_dict().items()})
    path = tmp_path / "ckpt1.pt"
    torch.save(states[1], path)
    one = influence.tracin(model, CE, train, ref, checkpoints=[(states[0], lrs[0])])
    model.load_state_dict(states[0])
    assert rel_err(one.scores, influence.exact(model, CE, train, ref, lr=lrs[0]).scores) < TOL
    many = influence.tracin(model, CE, train, ref, checkpoints=[(states[0], lrs[0]), (path, lrs[1]),
                                                                (states[2], lrs[2])])
    expected = 0
    for s, lr in zip(states, lrs):
        model.load_state_dict(s)
        expected = expected + influence.exact(model, CE, train, ref, lr=lr).scores
    assert rel_err(many.scores, expected) < TOL
    assert many.lr == pytest.approx(sum(lrs))
    last = influence.tracin(model, CE, train, ref, checkpoints=list(zip(states, lrs)), last_layer=True)
    expected_last = 0
    for s, lr in zip(states, lrs):
        model.load_state_dict(s)
        expected_last = expected_last + influence.lai(model, CE, train, ref, lr=lr, layers="last").scores
    assert rel_err(last.scores, expected_last) < TOL
    assert list(last.per_layer) == ["head"]


def test_tracin_pairwise(f64):
    model, train, ref = make_case("mlp")
    s = {k: v.clone() for k, v in model.state_dict().items()}
    tr = influence.tracin(model, CE, train, ref, checkpoints=[(s, 0.1), (s, 0.2)], pairwise=True)
    ex = influence.exact(model, CE, train, ref, lr=0.3, pairwise=True)
    assert rel_err(tr.pairwise, ex.pairwise) < TOL
