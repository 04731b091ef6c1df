"""Both bounds are true bounds: |Ghost - LAI| <= data bound <= a-priori bound, per pair, layer and sample."""

import math

import pytest
import torch
import toy_models as ex
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import influence
import theory
from theory.bounds import spectral_norm, token_epsilons
from theory.decomposition import sides
from theory.lipschitz import conv_operator_bound, gelu_lipschitz, sigmoid_lipschitz

LR = 0.2
REL = 1e-12  # rounding slack of SVD/eigen solvers and of the measured error, relative to the bound's scale


def check_bounds(model, loss_fn, train, ref, expect_apriori=True, pairing="all_pairs"):
    """Assert the chain per pair and layer, per sample, and against the public estimators."""
    res = theory.analyse(model, loss_fn, train, ref, LR, token_pairing=pairing)
    assert (res.apriori_pairwise is not None) == expect_apriori, res.apriori_reason
    for layer, e in res.error_pairwise.items():
        b = res.data_pairwise[layer]
        assert (e.abs() <= b + REL * b.max().clamp(min=1e-300)).all(), layer
        if res.apriori_pairwise is not None:
            a = res.apriori_pairwise[layer]
            assert (b <= a + REL * a.max().clamp(min=1e-300)).all(), layer
    data = res.data_bound()
    gh = influence.ghost(model, loss_fn, train, ref, LR).scores
    la = influence.lai(model, loss_fn, train, ref, LR, token_pairing=pairing).scores
    measured = (gh - la).abs()
    assert (measured <= data * (1 + REL) + 1e-15).all()
    if res.apriori_pairwise is not None:
        assert (data <= res.apriori_bound() * (1 + REL)).all()
    return res, measured


MLP_ACTS = ["relu", "tanh", "gelu", "sigmoid", "leaky_relu"]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), width=st.integers(2, 6),
       act=st.sampled_from(MLP_ACTS), bias=st.booleans(), mse=st.booleans())
def test_mlp_bounds_randomised(seed, depth, width, act, bias, mse):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = ex.mlp(d_in=4, widths=(width,) * depth, n_classes=3, activation=act, bias=bias)
        train, ref = ex.classification_batch((4,), 5, 3, seed), ex.classification_batch((4,), 4, 3, seed + 1)
        loss = influence.cross_entropy
        if mse:
            loss = influence.mse
            train, ref = (train[0], torch.randn(5, 3)), (ref[0], torch.randn(4, 3))
        check_bounds(model, loss, train, ref)
    finally:
        torch.set_default_dtype(old)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.sampled_from([1, 2]), kernel=st.sampled_from([1, 2, 3]),
       stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, "same"]), dilation=st.sampled_from([1, 2]),
       groups=st.sampled_from([1, 2]), bias=st.booleans(), act=st.sampled_from(["relu", "tanh"]))
def test_cnn_bounds_randomised(seed, dim, kernel, stride, padding, dilation, groups, bias, act):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        size = 12 if dim == 1 else 9
        try:
            model = ex.cnn(dim=dim, size=size, channels=(2, 4), kernel=kernel, stride=stride, padding=padding,
                           dilation=dilation, groups=groups, bias=bias, activation=act)
        except RuntimeError:  # the second conv's receptive field exceeds the first one's output
            assume(False)
        shape = (1,) + (size,) * dim
        check_bounds(model, influence.cross_entropy, ex.classification_batch(shape, 4, 3, seed),
                     ex.classification_batch(shape, 3, 3, seed + 1))
    finally:
        torch.set_default_dtype(old)


def test_residual_layernorm_mlp(f64):
    """A-priori bound through LayerNorm (batch-local rstd) and a residual connection (1 + ||J_block||)."""
    torch.manual_seed(5)
    res, _ = check_bounds(ex.residual_ln_mlp(), influence.cross_entropy, ex.classification_batch((5,), 5, 3, 0),
                          ex.classification_batch((5,), 4, 3, 1))
    assert res.apriori_pairwise is not None and res.apriori_pairwise["ln"].max() > 0


@pytest.mark.parametrize("pairing", ["all_pairs", "aligned"])
def test_transformer_data_bound_and_no_apriori(f64, pairing):
    torch.manual_seed(6)
    model = ex.tiny_transformer()
    train, ref = ex.token_batch(3, 4, 7, 0), ex.token_batch(3, 4, 7, 1)
    res, measured = check_bounds(model, influence.cross_entropy, train, ref, expect_apriori=False,
                                 pairing=pairing)
    assert measured.max() > 1e-4
    assert res.apriori_pairwise is None and "data_bound" in res.apriori_reason
    with pytest.raises(NotImplementedError, match="bmm.*only|data_bound"):
        theory.apriori_bound(model, influence.cross_entropy, train, ref, LR)


def test_bounds_along_a_training_run(f64):
    torch.manual_seed(7)
    model = ex.mlp(d_in=5, widths=(6, 5), n_classes=3)
    x, y = ex.classification_batch((5,), 24, 3, 0)
    ref = ex.classification_batch((5,), 6, 3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(6):
        batch = (x[4 * step:4 * step + 4], y[4 * step:4 * step + 4])
        check_bounds(model, influence.cross_entropy, batch, ref)
        loss = influence.cross_entropy(model(batch[0]), batch[1]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_public_bound_functions_agree_with_analysis(f64):
    torch.manual_seed(8)
    model = ex.cnn(dim=1, groups=2)
    train, ref = ex.classification_batch((1, 8), 4, 3, 0), ex.classification_batch((1, 8), 3, 3, 1)
    res = theory.analyse(model, influence.cross_entropy, train, ref, LR)
    data = theory.data_bound(model, influence.cross_entropy, train, ref, LR)
    prior = theory.apriori_bound(model, influence.cross_entropy, train, ref, LR)
    assert data.shape == prior.shape == (4,)
    assert torch.allclose(data, res.data_bound(), rtol=1e-12, atol=0)
    assert torch.allclose(prior, res.apriori_bound(), rtol=1e-12, atol=0)
    per = theory.data_bound(model, influence.cross_entropy, train, ref, LR, per_layer=True)
    assert torch.allclose(sum(per.values()), data, rtol=1e-12, atol=0)
    assert per["5"].abs().max() == 0  # the output layer: J = I, eps = 0
    worst = theory.apriori_bound(model, influence.cross_entropy, train, ref, LR, worst_case_output_gradient=True)
    assert (worst >= prior).all()
    with pytest.raises(ValueError, match="cross_entropy"):
        theory.apriori_bound(model, influence.mse, (train[0], torch.randn(4, 3)), (ref[0], torch.randn(3, 3)), LR,
                             worst_case_output_gradient=True)


def test_jacobian_norm_bounds_dominate_measured_norms(f64):
    torch.manual_seed(9)
    for model, x in [(ex.mlp(activation="gelu"), torch.randn(4, 5)),
                     (ex.cnn(dim=2, size=9, stride=2, dilation=2, groups=2, activation="leaky_relu"),
                      torch.randn(4, 1, 9, 9)),
                     (ex.residual_ln_mlp(), torch.randn(4, 5))]:
        types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm)
        mods = {n: m for n, m in model.named_modules() if isinstance(m, types)}
        bounds = theory.jacobian_norm_bounds(model, x, mods)
        jac = theory.jacobians(model, x, mods)
        for name, j in jac.items():
            measured = torch.linalg.matrix_norm(j.reshape(j.shape[0], j.shape[1], -1), ord=2).max()
            assert measured <= bounds.norms[name] * (1 + 1e-12), name
        last = list(mods)[-1]
        assert bounds.exact_output == {last} and bounds.norms[last] == 1.0


@pytest.mark.parametrize("dim,stride,dilation,groups,padding", [(1, 1, 1, 1, 1), (1, 2, 2, 2, 2), (2, 1, 1, 2, 1),
                                                                (2, 2, 2, 1, 0), (2, 1, 1, 1, 2)])
def test_conv_operator_bound_is_an_upper_bound(f64, dim, stride, dilation, groups, padding):
    torch.manual_seed(10)
    conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(4, 4, 3, stride=stride, dilation=dilation, groups=groups,
                                                  padding=padding, bias=False)
    shape = (4,) + (6,) * dim
    n_in = math.prod(shape)
    basis = torch.eye(n_in).reshape(n_in, *shape)
    with torch.no_grad():
        mat = conv(basis).reshape(n_in, -1)  # the conv as a linear map of this input size
    exact = torch.linalg.matrix_norm(mat, ord=2)
    assert exact <= conv_operator_bound(conv.weight, groups) * (1 + 1e-12)


def test_activation_constants(f64):
    z = torch.linspace(-8, 8, 200_001)
    gelu_slope = torch.autograd.functional.jacobian(lambda t: F.gelu(t).sum(), z).abs().max()
    assert gelu_slope <= gelu_lipschitz() and gelu_lipschitz() - gelu_slope < 1e-8
    sig_slope = (torch.sigmoid(z) * (1 - torch.sigmoid(z))).max()
    assert sig_slope <= sigmoid_lipschitz() < sig_slope + 1e-12


def test_token_epsilons_match_direct_spectral_norms(f64):
    """The QR-reduced eps_{t,t'} equals ||J_{i,t} J_{v,t'}^T - E_{t,t'}||_2 formed explicitly."""
    torch.manual_seed(11)
    model = ex.tiny_transformer()
    s_tr, s_rf = sides(model, influence.cross_entropy, ex.token_batch(2, 4, 7, 0), ex.token_batch(2, 4, 7, 1))
    for name in ["tok", "blocks.0.qkv" if "blocks.0.qkv" in s_tr.terms else "blocks.0.attn.qkv", "head"]:
        tr, rf = s_tr.terms[name], s_rf.terms[name]
        eps = token_epsilons(tr, rf, s_tr, s_rf)
        j_tr, j_rf = tr.jac[:, :, 0], rf.jac[:, :, 0]  # [n, F, T, q]
        f, t = j_tr.shape[1], j_tr.shape[2]
        c = f // t
        for i in range(2):
            for v in range(2):
                for a in range(t):
                    for b in range(t):
                        e = torch.zeros(f, f)
                        e[a * c:(a + 1) * c, b * c:(b + 1) * c] = torch.eye(c)
                        m = j_tr[i, :, a] @ j_rf[v, :, b].T - e
                        assert abs(eps[i, v, a, b] - torch.linalg.matrix_norm(m, ord=2)) < 1e-10
        if name == "head":
            assert eps.abs().max() == 0


def test_spectral_norm_helper(f64):
    m = torch.randn(20, 5, 7)
    assert torch.allclose(spectral_norm(m), torch.linalg.matrix_norm(m, ord=2), rtol=1e-12)
    assert torch.allclose(spectral_norm(m.transpose(1, 2)), torch.linalg.matrix_norm(m, ord=2), rtol=1e-12)


def test_cross_entropy_gradient_norm_bound(f64):
    logits, y = torch.randn(6, 4, 5) * 5, torch.randint(0, 5, (6, 4))
    y[0, :2] = -100
    y[1] = -100
    _, g = influence.losses.output_gradient(influence.cross_entropy, logits, y)
    bound = theory.cross_entropy_gradient_norm_bound(y)
    assert (g.flatten(1).norm(dim=1) <= bound + 1e-15).all() and bound[1] == 0
    assert abs(theory.cross_entropy_gradient_norm_bound(torch.tensor([3]))[0] - math.sqrt(2)) < 1e-15
