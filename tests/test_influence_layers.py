"""Layer options and pitfalls: convs, embeddings, LayerNorm, frozen and shared parameters, chunking, dtypes."""

import pytest
import torch
from conftest import rel_err
from torch import nn

import influence

TOL = 1e-8
CE = influence.cross_entropy


def check_all(model, x, y, n_train=4, lr=0.1, pairwise_too=True):
    model.eval()
    train, ref = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    ex = influence.exact(model, CE, train, ref, lr=lr)
    for mode in ("gram", "materialize"):
        gh = influence.ghost(model, CE, train, ref, lr=lr, mode=mode)
        assert rel_err(gh.scores, ex.scores) < TOL, mode
        for k in ex.per_layer:
            assert rel_err(gh.per_layer[k], ex.per_layer[k]) < TOL, (mode, k)
    if pairwise_too:
        exp = influence.exact(model, CE, train, ref, lr=lr, pairwise=True)
        ghp = influence.ghost(model, CE, train, ref, lr=lr, pairwise=True)
        assert rel_err(ghp.pairwise, exp.pairwise) < TOL
    return ex


class ConvNet(nn.Module):
    def __init__(self, conv: nn.Module, out_numel: int, classes: int = 3):
        super().__init__()
        self.conv = conv
        self.head = nn.Linear(out_numel, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def conv_numel(conv, shape):
    with torch.no_grad():
        return conv(torch.zeros(1, *shape)).numel()


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=4, padding="same"),  # even kernel: asymmetric explicit pads
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, stride=2, padding=1, groups=2),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    dict(kernel_size=3, padding="valid", bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding="same", padding_mode="circular", groups=4),
])
def test_conv2d_options(f64, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, **kwargs)
    model = ConvNet(conv, conv_numel(conv, (4, 7, 6)))
    check_all(model, torch.randn(7, 4, 7, 6), torch.randint(0, 3, (7,)))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, stride=2, dilation=2, groups=2, padding=2),
    dict(kernel_size=5, padding="same", padding_mode="replicate"),
])
def test_conv1d_options(f64, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 4, **kwargs)
    model = ConvNet(conv, conv_numel(conv, (2, 11)))
    check_all(model, torch.randn(7, 2, 11), torch.randint(0, 3, (7,)))


class EmbedNet(nn.Module):
    def __init__(self, vocab=11, d=6, padding_idx=None, tied=False, broadcast_pos=True):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.pos = nn.Embedding(16, d)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=not tied)
        if tied:
            self.head.weight = self.tok.weight
        self.broadcast_pos = broadcast_pos

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        if not self.broadcast_pos:
            pos = pos.expand(ids.shape[0], -1)
        h = self.tok(ids) + self.pos(pos)
        h = h + torch.tanh(self.mix(h)).cumsum(1) / 3  # mixes tokens, like attention would
        return self.head(self.norm(h))


@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("broadcast_pos", [True, False])
def test_embeddings_repeats_padding_tied_broadcast_positions(f64, padding_idx, tied, broadcast_pos):
    torch.manual_seed(2)
    model = EmbedNet(padding_idx=padding_idx, tied=tied, broadcast_pos=broadcast_pos)
    ids = torch.randint(0, 11, (7, 6))
    ids[0] = torch.tensor([3, 3, 3, 0, 0, 5])  # repeated ids and padding in one sample
    ids[5, :2] = 0
    ex = check_all(model, ids, torch.randint(0, 11, (7, 6)))
    if tied:
        assert "tok" in ex.per_layer  # the shared weight is reported under its owner


def test_padding_rows_get_no_gradient(f64):
    torch.manual_seed(0)
    emb = nn.Embedding(5, 3, padding_idx=0)
    model = nn.Sequential(emb, nn.Flatten(), nn.Linear(12, 2)).eval()
    ids = torch.tensor([[0, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [3, 4, 1, 0]])
    y = torch.tensor([0, 1, 0, 1])
    r = influence.ghost(model, CE, (ids[:2], y[:2]), (ids[2:], y[2:]), lr=1.0)
    assert r.per_layer["0"][0] == 0  # an all-padding sample has no embedding gradient


@pytest.mark.parametrize("ln_kwargs", [dict(), dict(bias=False), dict(elementwise_affine=False)])
def test_layernorm_variants_and_two_trailing_dims(f64, ln_kwargs):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 6)
            self.norm = nn.LayerNorm((3, 6), **ln_kwargs)
            self.rms = nn.RMSNorm(6)
            self.head = nn.Linear(18, 3)

        def forward(self, x):
            return self.head(self.rms(self.norm(self.inp(x))).flatten(1))

    ex = check_all(Net(), torch.randn(7, 3, 4), torch.randint(0, 3, (7,)))
    assert ("norm" in ex.per_layer) == ln_kwargs.get("elementwise_affine", True)


def test_frozen_parameters_are_excluded(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].requires_grad_(False)
    model[2].weight.requires_grad_(False)  # bias-only block
    model[4].bias.requires_grad_(False)  # weight-only block
    ex = check_all(model, torch.randn(7, 5), torch.randint(0, 3, (7,)))
    assert "0" not in ex.per_layer
    la = influence.lai(model, CE, (torch.randn(3, 5), torch.tensor([0, 1, 2])),
                       (torch.randn(2, 5), torch.tensor([0, 1])), lr=0.1)
    assert "0" not in la.per_layer


def test_module_called_twice(f64):
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(5, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    check_all(Twice(), torch.randn(7, 5), torch.randint(0, 3, (7,)))


def test_dict_and_tuple_inputs(f64):
    torch.manual_seed(0)

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, u, v):
            return self.head(torch.relu(self.a(u) + self.b(v)))

    model = TwoInputs().eval()
    u, v, y = torch.randn(6, 3), torch.randn(6, 2), torch.randint(0, 2, (6,))
    ex = influence.exact(model, CE, ((u[:4], v[:4]), y[:4]), ((u[4:], v[4:]), y[4:]), lr=0.1)
    gt = influence.ghost(model, CE, ((u[:4], v[:4]), y[:4]), ((u[4:], v[4:]), y[4:]), lr=0.1)
    gd = influence.ghost(model, CE, ({"u": u[:4], "v": v[:4]}, y[:4]), ({"u": u[4:], "v": v[4:]}, y[4:]), lr=0.1)
    assert rel_err(gt.scores, ex.scores) < TOL and rel_err(gd.scores, ex.scores) < TOL


def test_chunking_and_memory_budget(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 9)).eval()
    ids, y = torch.randint(0, 9, (13, 5)), torch.randint(0, 9, (13, 5))
    train, ref = (ids[:9], y[:9]), (ids[9:], y[9:])
    base = influence.exact(model, CE, train, ref, lr=0.1, chunk_size=4)
    row = 4 * 5 * 5 * 8 * 3  # one training row's token-pair Grams against 4 reference samples (scoring.gram_row_bytes)
    for kw in (dict(chunk_size=2), dict(chunk_size=4, mode="gram", memory_budget=row),
               dict(pairwise=True, chunk_size=3)):
        assert rel_err(influence.ghost(model, CE, train, ref, lr=0.1, **kw).scores, base.scores) < TOL, kw
    with pytest.raises(influence.MemoryBudgetError, match="memory_budget"):  # not even one row fits: refused
        influence.ghost(model, CE, train, ref, lr=0.1, mode="gram", memory_budget=row - 1)
    assert rel_err(influence.lai(model, CE, train, ref, lr=0.1, chunk_size=2).scores,
                   influence.lai(model, CE, train, ref, lr=0.1).scores) < 1e-12


def test_sum_convention_and_lr_scale(f64):
    """Pitfall 6: score = lr <grad l_i, grad mean_v l_v>; doubling lr doubles, duplicating the ref set changes nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    train, ref = (x[:5], y[:5]), (x[5:], y[5:])
    ref2 = (torch.cat([x[5:], x[5:]]), torch.cat([y[5:], y[5:]]))
    for est in (influence.exact, influence.ghost, influence.lai):
        a = est(model, CE, train, ref, lr=0.1).scores
        assert rel_err(est(model, CE, train, ref, lr=0.2).scores, 2 * a) < 1e-12
        assert rel_err(est(model, CE, train, ref2, lr=0.1).scores, a) < 1e-12


def test_scores_keep_model_dtype():
    """Pitfall 7: scoring never casts down; a float32 model gives float32, a float64 model float64."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype).eval()
        x, y = torch.randn(6, 4, dtype=dtype), torch.randint(0, 3, (6,))
        for est in (influence.exact, influence.ghost, influence.lai):
            assert est(model, CE, (x[:4], y[:4]), (x[4:], y[4:]), lr=0.1).scores.dtype == dtype


def test_estimators_leave_model_untouched(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for est in (influence.exact, influence.ghost, influence.lai):
        est(model, CE, (x[:5], y[:5]), (x[5:], y[5:]), lr=0.1)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert not model[0]._forward_hooks
    assert all("forward" not in m.__dict__ for m in model.modules())  # the recording's shadowed forward is gone


def test_mse_loss_uses_autograd_output_gradient(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    train, ref = (x[:4], y[:4]), (x[4:], y[4:])
    ex = influence.exact(model, influence.mse, train, ref, lr=0.1)
    assert rel_err(influence.ghost(model, influence.mse, train, ref, lr=0.1).scores, ex.scores) < TOL
    assert rel_err(influence.lai(model, influence.mse, train, ref, lr=0.1, layers="last").scores,
                   ex.per_layer["2"]) < TOL


def test_ghost_weighted_gradient_matches_backward(f64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 7)).eval()
    ids, y = torch.randint(0, 7, (6, 3)), torch.randint(0, 7, (6, 3))
    r = influence.ghost(model, CE, (ids[:4], y[:4]), (ids[4:], y[4:]), lr=0.1)
    w = torch.tensor([1.0, 0.0, 0.5, 2.0])
    grads = dict((id(p), g) for p, g in r.weighted_gradient(w))
    loss = (CE(model(ids[:4]), y[:4]) * w).sum()
    expected = torch.autograd.grad(loss, list(model.parameters()))
    assert len(grads) == len(expected)
    for p, e in zip(model.parameters(), expected):
        assert rel_err(grads[id(p)], e) < 1e-12
