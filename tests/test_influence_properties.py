"""Property-based checks (hypothesis) over random MLP/CNN shapes, batch sizes and modes: Ghost == Exact,
LAI(last) == Exact(head), per-layer terms sum to the score, pairwise rows average to the score."""

import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import influence

CE = influence.cross_entropy
SETTINGS = dict(max_examples=12, deadline=None)


def _check(model, x, y, n_train, mode, lr):
    model = model.double().eval()
    train, ref = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    ex = influence.exact(model, CE, train, ref, lr=lr, pairwise=True)
    gh = influence.ghost(model, CE, train, ref, lr=lr, mode=mode, pairwise=True)
    la = influence.lai(model, CE, train, ref, lr=lr, layers="last", mode=mode)
    head = [n for n, _ in model.named_modules()][-1]
    assert rel_err(gh.pairwise, ex.pairwise) < 1e-8
    assert rel_err(la.scores, ex.per_layer[head]) < 1e-8
    assert rel_err(sum(gh.per_layer.values()), gh.scores) < 1e-12
    assert rel_err(gh.pairwise.mean(1), gh.scores) < 1e-12


@settings(**SETTINGS)
@given(widths=st.lists(st.integers(1, 9), min_size=1, max_size=3), d_in=st.integers(1, 6),
       classes=st.integers(2, 5), n_train=st.integers(1, 6), n_ref=st.integers(1, 5),
       bias=st.booleans(), mode=st.sampled_from(["gram", "materialize", "auto"]), seed=st.integers(0, 10_000))
def test_mlp_property(widths, d_in, classes, n_train, n_ref, bias, mode, seed):
    torch.manual_seed(seed)
    dims, layers = [d_in, *widths], []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(dims[-1], classes))
    n = n_train + n_ref
    _check(model, torch.randn(n, d_in, dtype=torch.float64), torch.randint(0, classes, (n,)), n_train, mode, 0.1)


@settings(**SETTINGS)
@given(c_in=st.sampled_from([1, 2, 4]), c_out=st.sampled_from([2, 4]), k=st.integers(1, 3),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       same=st.booleans(), side=st.integers(5, 7), conv1d=st.booleans(), n_train=st.integers(1, 4),
       n_ref=st.integers(1, 4), mode=st.sampled_from(["gram", "materialize"]), seed=st.integers(0, 10_000))
def test_cnn_property(c_in, c_out, k, stride, dilation, groups, same, side, conv1d, n_train, n_ref, mode, seed):
    torch.manual_seed(seed)
    groups = groups if c_in % groups == 0 else 1
    padding = "same" if same else k // 2
    stride = 1 if same else stride
    cls = nn.Conv1d if conv1d else nn.Conv2d
    conv = cls(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    shape = (c_in, side) if conv1d else (c_in, side, side)
    with torch.no_grad():
        numel = conv(torch.zeros(1, *shape, dtype=torch.float64)).numel()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(numel, 3))
    n = n_train + n_ref
    _check(model, torch.randn(n, *shape, dtype=torch.float64), torch.randint(0, 3, (n,)), n_train, mode, 0.3)
