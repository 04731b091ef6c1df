"""Convolutions through the lazy ``Patches`` factor (float64): the conv rule produces Patches (the bias as its
unstored ones column) and every Ghost path that reads them equals Exact at rel 1e-8: the contracted form, the
Gram form, chunking, frozen weight or bias, a shared conv module, Adam's preconditioner, self-influence and
within-batch pairwise products. ``rows_times`` (the verification's projection) and LAI's conv activation (a view
of the input with an unstored ones column) equal their materialised forms."""

import pytest
import torch
from conftest import rel_err
from torch import nn
from torch.nn import functional as F

import influence
from influence.factors import Dense, Patches, rows_times
from influence.layers import Context, ConvRule, lai_activation, unfold_conv_input
from influence.layers.conv import conv_patches

CE = influence.cross_entropy
TOL = 1e-8

CONVS = {
    "2d-zeros-stride": (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1), (7, 6)),
    "2d-reflect-dil-groups": (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=(3, 2), padding=(1, 2),
                                             dilation=(1, 2), groups=2, padding_mode="reflect"), (7, 6)),
    "2d-circular-same": (nn.Conv2d, dict(in_channels=2, out_channels=6, kernel_size=3, padding="same",
                                         padding_mode="circular", groups=2), (6, 6)),
    "2d-valid-nobias-groups4": (nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=2, padding="valid",
                                                groups=4, bias=False), (5, 6)),
    "2d-depthwise-10": (nn.Conv2d, dict(in_channels=10, out_channels=10, kernel_size=3, padding=1, groups=10),
                        (4, 5)),
    "2d-square-circular-same": (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="same",
                                                padding_mode="circular", groups=2), (5, 5)),
    "2d-same-even-kernel": (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=(2, 3), padding="same"),
                            (5, 6)),
    "1d-zeros-same-dil": (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2, padding="same"),
                          (10,)),
    "1d-same-dil-circular": (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2,
                                             padding="same", padding_mode="circular"), (11,)),
    "1d-reflect-stride-groups": (nn.Conv1d, dict(in_channels=4, out_channels=4, kernel_size=5, stride=2, padding=2,
                                                 padding_mode="reflect", groups=2), (13,)),
    "1d-valid-nobias": (nn.Conv1d, dict(in_channels=2, out_channels=5, kernel_size=4, bias=False), (9,)),
}


class Net(nn.Module):
    """conv (the case under test) -> tanh -> [the same conv again when ``shared``] -> flatten -> linear."""

    def __init__(self, cls, kwargs, spatial, shared=False):
        super().__init__()
        self.conv, self.shared = cls(**kwargs), shared
        with torch.no_grad():
            x = torch.zeros(1, kwargs["in_channels"], *spatial)
            y = self.conv(x)
            if shared:
                y = self.conv(y)
        self.head = nn.Linear(y.numel(), 3)

    def forward(self, x):
        y = torch.tanh(self.conv(x))
        if self.shared:
            y = torch.tanh(self.conv(y))
        return self.head(y.flatten(1))


def setup(case, shared=False, seed=0, n=5, n_ref=4):
    cls, kwargs, spatial = CONVS[case]
    torch.manual_seed(seed)
    model = Net(cls, kwargs, spatial, shared).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    data = lambda k: (torch.randn(k, kwargs["in_channels"], *spatial, generator=g, dtype=torch.float64),  # noqa
                      torch.randint(0, 3, (k,), generator=g))
    return model, data(n), data(n_ref)


def exact_scores(model, train, ref, **kw):
    return influence.exact(model, CE, train, ref, lr=0.1, **kw)


@pytest.mark.parametrize("case", list(CONVS))
def test_ghost_equals_exact_through_patches(f64, case):
    model, train, ref = setup(case)
    want = exact_scores(model, train, ref)
    for kw in ({}, {"chunk_size": 2}, {"mode": "gram"}, {"mode": "materialize"}):
        got = influence.ghost(model, CE, train, ref, lr=0.1, fallback="error", **kw)
        assert rel_err(got.scores, want.scores) < TOL, kw
        for name, s in want.per_layer.items():
            assert rel_err(got.per_layer[name], s) < TOL, (kw, name)


@pytest.mark.parametrize("case", ["2d-reflect-dil-groups", "1d-reflect-stride-groups"])
@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_frozen_weight_or_bias(f64, case, frozen):
    model, train, ref = setup(case)
    getattr(model.conv, frozen).requires_grad_(False)
    got = influence.ghost(model, CE, train, ref, lr=0.1, fallback="error")
    assert rel_err(got.scores, exact_scores(model, train, ref).scores) < TOL


@pytest.mark.parametrize("case", ["2d-square-circular-same", "1d-reflect-stride-groups"])
def test_shared_conv_module(f64, case):
    model, train, ref = setup(case, shared=True)  # one conv module called twice: one block, two segments
    want = exact_scores(model, train, ref)
    for kw in ({}, {"mode": "gram"}, {"chunk_size": 3}):
        got = influence.ghost(model, CE, train, ref, lr=0.1, fallback="error", **kw)
        assert rel_err(got.scores, want.scores) < TOL, kw


@pytest.mark.parametrize("case", ["2d-reflect-dil-groups", "1d-same-dil-circular", "2d-valid-nobias-groups4"])
def test_adam_preconditioner(f64, case):
    model, train, ref = setup(case)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        CE(model(train[0]), train[1]).mean().backward()
        opt.step()
    want = exact_scores(model, train, ref, preconditioner=influence.adam_preconditioner(opt, model)).scores
    got = influence.Session(model, CE, ref, estimator="ghost", lr=0.1, optimizer=opt).score(train).scores
    assert rel_err(got, want) < TOL
    assert rel_err(influence.ghost(model, CE, train, ref, lr=0.1).scores, want) > 1e-4  # P mattered


@pytest.mark.parametrize("case", ["2d-reflect-dil-groups", "1d-reflect-stride-groups", "2d-valid-nobias-groups4"])
def test_self_influence_and_pairwise_within(f64, case):
    model, train, _ = setup(case, n=6)
    pw = exact_scores(model, train, train, pairwise=True).pairwise
    s = influence.Session(model, CE, train, estimator="ghost", lr=0.1)
    assert rel_err(s.self_influence(train), pw.diagonal()) < TOL
    assert rel_err(s.pairwise_within(train), pw) < TOL
    r = s.score(train)
    assert rel_err(r.pairwise_within(), pw) < TOL
    assert rel_err(r.self_products(), pw.diagonal()) < TOL
    assert rel_err(influence.ghost(model, CE, train, train, lr=0.1, pairwise=True).pairwise, pw) < TOL


def _pieces(conv, x, ctx=Context()):
    out = conv(x)
    return ConvRule().ghost_pieces(conv, x, torch.randn_like(out), ctx)


def test_rule_produces_patches_with_the_bias_as_unstored_ones(f64):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    x = torch.randn(3, 4, 7, 7)
    (piece,) = _pieces(conv, x)
    assert isinstance(piece.segment.right, Patches) and piece.segment.right.ones
    assert piece.params == (conv.weight, conv.bias)
    assert piece.segment.right.inp.data_ptr() == x.data_ptr() and piece.segment.right.padding == (1, 1)
    # (module, input shape, F.pad pads by hand, pad mode, implicit)
    for module, shape, pads, mode, implicit in (
            (nn.Conv1d(2, 3, 3), (3, 2, 9), (0, 0), "constant", True),  # no padding
            (nn.Conv1d(2, 3, 3, dilation=2, padding="same"), (3, 2, 9), (2, 2), "constant", True),
            (nn.Conv2d(2, 3, (2, 3), padding="same"), (3, 2, 5, 5), (1, 1, 0, 1), "constant", False),  # uneven
            (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (3, 2, 5, 5), (1, 1, 1, 1), "reflect", False)):
        xm = torch.randn(shape)
        (pc,) = _pieces(module, xm)  # symmetric zeros stay implicit: the factor holds a view of the input
        assert (pc.segment.right.inp.data_ptr() == xm.data_ptr()) == implicit
        xp = F.pad(xm, pads, mode=mode)
        if xm.dim() == 3:
            xp, k = xp.unsqueeze(2), (1, module.kernel_size[0])
            d, st = (1, module.dilation[0]), (1, module.stride[0])
        else:
            k, d, st = module.kernel_size, module.dilation, module.stride
        want = F.unfold(xp, k, dilation=d, stride=st).transpose(1, 2)
        assert torch.equal(pc.segment.right.x[..., :-1].reshape(want.shape), want)
        assert torch.equal(unfold_conv_input(module, xm), want)
    # frozen bias: the weight alone; frozen weight: the bias alone against a ones factor; shared: apart
    conv.bias.requires_grad_(False)
    (piece,) = _pieces(conv, x)
    assert isinstance(piece.segment.right, Patches) and not piece.segment.right.ones
    conv.bias.requires_grad_(True)
    conv.weight.requires_grad_(False)
    (piece,) = _pieces(conv, x)
    assert piece.params == (conv.bias,) and isinstance(piece.segment.right, Dense)
    assert bool((piece.segment.right.x == 1).all()) and piece.segment.right.x.shape == (3, 16, 2, 1)
    conv.weight.requires_grad_(True)
    pieces = _pieces(conv, x, Context(shared=frozenset({id(conv.weight)})))
    assert [pc.params for pc in pieces] == [(conv.weight,), (conv.bias,)]
    assert isinstance(pieces[0].segment.right, Patches) and not pieces[0].segment.right.ones


@pytest.mark.parametrize("case", list(CONVS))
def test_rows_times_equals_the_unfolded_projection(f64, case):
    cls, kwargs, spatial = CONVS[case]
    torch.manual_seed(3)
    conv = cls(**kwargs)
    x = torch.randn(3, kwargs["in_channels"], *spatial)
    for ones in (False, True):
        patches = conv_patches(conv, x)
        patches = patches.with_ones() if ones else patches
        w = torch.randn(patches.groups, patches.dim, 2)
        dense = Dense(patches.x)
        slow = torch.bmm(dense.x.permute(2, 0, 1, 3).reshape(patches.groups, -1, patches.dim), w)
        assert rel_err(rows_times(patches, w), slow) < 1e-12
        assert rel_err(rows_times(dense, w), slow) < 1e-12
        if ones:  # a Dense factor with an unstored ones column
            lazy = Dense(patches.x[..., :-1], ones=True)
            assert rel_err(rows_times(lazy, w), slow) < 1e-12
    # a convolution's left factor: a permuted view of its output gradient (no row views; fused products)
    grad = torch.randn(conv(x).shape).reshape(3, conv.groups, conv.out_channels // conv.groups, -1)
    left = grad.permute(0, 3, 1, 2)
    for ones in (False, True):
        w = torch.randn(conv.groups, left.shape[-1] + ones, 2)
        full = torch.cat([left, torch.ones(*left.shape[:-1], 1)], -1) if ones else left
        slow = torch.bmm(full.permute(2, 0, 1, 3).reshape(conv.groups, -1, full.shape[-1]), w)
        assert rel_err(rows_times(Dense(left, ones), w), slow) < 1e-12
    assert unfold_conv_input(conv, x).shape == (3, patches.tokens, kwargs["in_channels"] * conv.weight[0, 0].numel())


def test_lai_conv_activation_is_a_view_with_unstored_ones(f64):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(5, 3, 6, 6)
    act = lai_activation(conv, x)
    assert act.ones and act.data.data_ptr() == x.data_ptr()
    assert torch.equal(act.x, torch.cat([x.reshape(5, 1, 1, -1), torch.ones(5, 1, 1, 1)], -1))
    assert act.flatten_tokens() is act  # one token: nothing to flatten, the ones column stays unstored
    conv.weight.requires_grad_(False)
    act = lai_activation(conv, x)
    assert act.x.shape == (5, 1, 1, 1) and bool((act.x == 1).all())


@pytest.mark.parametrize("case", ["2d-reflect-dil-groups", "1d-valid-nobias"])
def test_lai_on_a_cnn_equals_its_formula(f64, case):
    """LAI_i = lr * mean_v (g_i . g_v) * sum_l (a_i^l . a_v^l), a^l = [flattened input of layer l, 1 if a bias]."""
    model, train, ref = setup(case)
    acts = {}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: acts.setdefault(name, []).append(a[0]))
             for name, m in (("conv", model.conv), ("head", model.head))]
    try:
        def side(batch):
            acts.clear()
            f = model(batch[0])
            g = torch.softmax(f, -1) - F.one_hot(batch[1], 3).double()
            feats = []
            for name, mod in (("conv", model.conv), ("head", model.head)):
                a = acts[name][0].flatten(1)
                feats.append(torch.cat([a, torch.ones(len(a), 1)], 1) if mod.bias is not None else a)
            return g, feats
        g_t, a_t = side(train)
        g_r, a_r = side(ref)
    finally:
        for h in hooks:
            h.remove()
    want = 0.1 * ((g_t @ g_r.T) * sum(a @ b.T for a, b in zip(a_t, a_r))).mean(1)
    for pairing in ("all_pairs", "aligned"):
        got = influence.lai(model, CE, train, ref, lr=0.1, token_pairing=pairing).scores
        assert rel_err(got, want) < TOL


@pytest.mark.parametrize("case", ["2d-zeros-stride", "1d-zeros-same-dil", "2d-depthwise-10"])
def test_implicit_padding_equals_the_unfolded_factor(f64, case):
    """Patches with implicit zero padding against the Dense factor of the unfolded patches, on every
    contraction: weighted reference matrices, contractions, Gram and per-sample products, row chunks."""
    from influence.factors import Block, Segment
    cls, kwargs, spatial = CONVS[case]
    torch.manual_seed(4)
    conv = cls(**kwargs)

    def blocks(n):
        x = torch.randn(n, kwargs["in_channels"], *spatial)
        grad = torch.randn(conv(x).shape)
        (pc,) = _pieces(conv, x)
        assert pc.segment.right.padding != (0, 0)
        left = Dense(grad.reshape(n, conv.groups, -1, pc.segment.right.tokens).permute(0, 3, 1, 2))
        fast = Block("c", [Segment(left, pc.segment.right)])
        return fast, Block("c", [Segment(left, Dense(pc.segment.right.x))])

    fast, slow = blocks(5)
    ref_fast, ref_slow = blocks(3)
    w = torch.rand(5)
    for weights in (None, w):
        assert rel_err(fast.matrix(weights), slow.matrix(weights)) < 1e-12
    m = ref_slow.matrix() / 3
    assert rel_err(ref_fast.matrix() / 3, m) < 1e-12
    assert rel_err(fast.contract(m), slow.contract(m)) < 1e-12
    assert rel_err(fast.rows(slice(1, 4)).contract(m), slow.contract(m)[1:4]) < 1e-12
    assert rel_err(fast.gram(ref_fast), slow.gram(ref_slow)) < 1e-12
    assert rel_err(fast.per_sample(), slow.per_sample()) < 1e-12
