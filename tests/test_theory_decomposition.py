"""The decomposition Ghost - LAI = eta mean_v sum_l E_l(i, v) is an identity (float64, 1e-10)."""

import pytest
import torch
import toy_models as ex
from torch import nn
from torch.func import functional_call, jacrev

import influence
import theory
from theory.decomposition import ghost_pair, sides
from theory.terms import build_side

TOL = 1e-10
LR = 0.3


def _cases():
    return [
        ("mlp", lambda: ex.mlp(), lambda s: ex.classification_batch((5,), 5 + s, 3, s)),
        ("mlp_tanh_nobias", lambda: ex.mlp(widths=(4,), activation="tanh", bias=False),
         lambda s: ex.classification_batch((5,), 4, 3, s)),
        ("cnn1d", lambda: ex.cnn(dim=1, stride=2, dilation=2, groups=2),
         lambda s: ex.classification_batch((1, 8), 5, 3, s)),
        ("cnn2d", lambda: ex.cnn(dim=2, size=5, channels=(2, 4), padding="same", groups=2),
         lambda s: ex.classification_batch((1, 5, 5), 4, 3, s)),
        ("residual_ln", lambda: ex.residual_ln_mlp(), lambda s: ex.classification_batch((5,), 5, 3, s)),
        ("transformer", lambda: ex.tiny_transformer(), lambda s: ex.token_batch(4, 4, 7, s)),
    ]


def _estimators(model, train, ref, pairing, pairwise=False):
    gh = influence.ghost(model, influence.cross_entropy, train, ref, LR, pairwise=pairwise)
    la = influence.lai(model, influence.cross_entropy, train, ref, LR, token_pairing=pairing, pairwise=pairwise)
    return gh, la


@pytest.mark.parametrize("name,build,data", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("pairing", ["all_pairs", "aligned"])
def test_identity_per_pair_and_per_sample(f64, name, build, data, pairing):
    torch.manual_seed(0)
    model = build()
    train, ref = data(0), data(1)
    pair = theory.decomposition_pairwise(model, influence.cross_entropy, train, ref, LR, token_pairing=pairing)
    per = theory.decomposition(model, influence.cross_entropy, train, ref, LR, token_pairing=pairing)
    gh, la = _estimators(model, train, ref, pairing, pairwise=True)
    assert set(pair) == set(gh.per_layer_pairwise)  # every Ghost layer, LayerNorm included
    for layer, e in pair.items():
        want = gh.per_layer_pairwise[layer] - la.per_layer_pairwise.get(layer, torch.zeros_like(e))
        assert (e - want).abs().max() < TOL, layer
        assert (per[layer] - e.mean(1)).abs().max() < TOL
    total = sum(per.values())
    assert (total - (gh.scores - la.scores)).abs().max() < TOL
    assert (gh.scores - la.scores).abs().max() > 1e-4  # the identity is not trivially 0 = 0


@pytest.mark.parametrize("name,build,data", _cases(), ids=[c[0] for c in _cases()])
def test_last_layer_term_is_zero(f64, name, build, data):
    torch.manual_seed(1)
    model = build()
    per = theory.decomposition(model, influence.cross_entropy, data(0), data(1), LR)
    last = list(per)[-1]
    assert isinstance(dict(model.named_modules())[last], nn.Linear)
    assert per[last].abs().max() < 1e-14
    assert max(v.abs().max() for v in per.values()) > 1e-4


def test_single_linear_layer_has_no_error(f64):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    train, ref = ex.classification_batch((5,), 6, 3, 0), ex.classification_batch((5,), 4, 3, 1)
    per = theory.decomposition(model, influence.cross_entropy, train, ref, LR)
    assert per["0"].abs().max() < 1e-15
    assert theory.data_bound(model, influence.cross_entropy, train, ref, LR).abs().max() == 0
    assert theory.apriori_bound(model, influence.cross_entropy, train, ref, LR).abs().max() == 0


def test_explicit_jacobian_form_on_mlp(f64):
    """(a_i.a_v + 1) g_i^T (J_i J_v^T - I) g_v with J from the closed form W^L D^{L-1} ... D^l."""
    torch.manual_seed(3)
    model = ex.mlp(d_in=5, widths=(4, 3), n_classes=3)
    (x, _), ref = ex.classification_batch((5,), 5, 3, 0), ex.classification_batch((5,), 4, 3, 1)
    l0, l1, l2 = model[0], model[2], model[4]

    def jac_and_acts(inp):
        s0 = l0(inp)
        h0 = s0.relu()
        s1 = l1(h0)
        j1 = l2.weight[None] * (s1 > 0)[:, None, :].to(inp.dtype)  # d f / d s1
        j0 = j1 @ (l1.weight[None] * (s0 > 0)[:, None, :].to(inp.dtype))  # d f / d s0
        return [j0, j1], [inp, h0]

    with torch.no_grad():
        ys = (torch.randn(5, 3), torch.randn(4, 3))
        pair = theory.decomposition_pairwise(model, influence.mse, (x, ys[0]), (ref[0], ys[1]), LR)
        js_i, as_i = jac_and_acts(x)
        js_v, as_v = jac_and_acts(ref[0])
        g_i, g_v = model(x) - ys[0], model(ref[0]) - ys[1]
        for name, j_i, j_v, a_i, a_v in zip(["0", "2"], js_i, js_v, as_i, as_v):
            aa = a_i @ a_v.T + 1
            m = torch.einsum("icq,veq->ivce", j_i, j_v) - torch.eye(3)
            want = LR * aa * torch.einsum("ic,ivce,ve->iv", g_i, m, g_v)
            assert (pair[name] - want).abs().max() < TOL
    jac = theory.jacobians(model, x, {"0": l0, "2": l1})
    assert (jac["0"] - js_i[0]).abs().max() < 1e-14 and (jac["2"] - js_i[1]).abs().max() < 1e-14


def test_layer_ntk_matches_parameter_jacobians(f64):
    """Theta_l = Phi_i Phi_v^T from J and unfolded inputs equals (df_i/dtheta_l)(df_v/dtheta_l)^T from torch.func,
    and g_i^T Theta_l g_v is Ghost's layer term: the operator the flattened-layer bound takes the norm of."""
    torch.manual_seed(4)
    model = ex.cnn(dim=2, size=5, channels=(2, 4), padding=1, stride=2, groups=2)
    train, ref = ex.classification_batch((1, 5, 5), 3, 3, 0), ex.classification_batch((1, 5, 5), 2, 3, 1)
    s_tr, s_rf = sides(model, influence.cross_entropy, train, ref)
    gh = influence.ghost(model, influence.cross_entropy, train, ref, 1.0, pairwise=True)
    params = dict(model.named_parameters())
    for name in ["0", "2"]:
        names = [f"{name}.weight", f"{name}.bias"]

        def f_of(p, x):
            return functional_call(model, {**params, **p}, (x,))

        def phi(x):
            j = jacrev(f_of)({k: params[k].detach() for k in names}, x)
            return torch.cat([j[k].reshape(x.shape[0], 3, -1) for k in names], -1)  # [n, C, params]

        with torch.no_grad():
            ntk_ref = torch.einsum("icm,vem->ivce", phi(train[0]), phi(ref[0]))
        tr, rf = s_tr.terms[name], s_rf.terms[name]
        ntk = torch.einsum("ifm,vem->ivfe", tr.param_jacobian(), rf.param_jacobian())
        assert (ntk - ntk_ref).abs().max() < TOL
        ghost_l = torch.einsum("if,ivfe,ve->iv", s_tr.g, ntk, s_rf.g)
        assert (ghost_l - gh.per_layer_pairwise[name]).abs().max() < TOL
        assert (ghost_pair(tr, rf, s_tr.g, s_rf.g) - ghost_l).abs().max() < TOL


def test_layer_kinds(f64):
    model = ex.tiny_transformer()
    kinds = {k: t.kind for k, t in build_side(model, influence.cross_entropy, ex.token_batch(2, 4, 7, 0)).terms.items()}
    assert kinds["tok"] == kinds["blocks.0.fc"] == kinds["head"] == "token"
    assert kinds["blocks.0.ln1"] == kinds["ln_f"] == "norm"
    aligned = build_side(model, influence.cross_entropy, ex.token_batch(2, 4, 7, 0), "aligned").terms
    assert aligned["head"].kind == "flat"
    conv = build_side(ex.cnn(), influence.cross_entropy, ex.classification_batch((1, 8), 2, 3, 0)).terms
    assert conv["0"].kind == "flat" and conv["5"].kind == "token"


def test_refuses_what_it_does_not_cover(f64):
    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.a(self.a(x)))

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    batch = (torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match="more than once"):
        theory.decomposition(Reused().eval(), influence.cross_entropy, batch, batch, LR)
    ids = (torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(NotImplementedError, match="tied"):
        theory.decomposition(Tied().eval(), influence.cross_entropy, ids, ids, LR)
    with pytest.raises(ValueError, match="token_pairing"):
        theory.decomposition(ex.mlp(), influence.cross_entropy, (torch.randn(2, 5), torch.tensor([0, 1])),
                             (torch.randn(2, 5), torch.tensor([0, 1])), LR, token_pairing="nope")
