"""Fast paths of influence.factors equal the materialised products in float64.

* ``Dense(..., ones=True)`` (a bias column that is not stored) against the explicitly concatenated factor;
* ``Patches`` (a convolution's input, contracted by convolution kernels) against the unfolded patches;
* reference matrices with and without per-sample weights, contractions, Gram and per-sample products.
"""

import pytest
import torch
from conftest import rel_err
from torch import nn
from torch.nn import functional as F

from influence.factors import Block, Dense, Patches, Segment, ones_factor
from influence.layers import conv_pads, unfold_conv_input


def _cat_ones(x):
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def _check_block_pair(fast: Block, slow: Block, ref_fast: Block, ref_slow: Block, n: int):
    w = torch.rand(n, dtype=torch.float64)
    for weights in (None, w):
        assert rel_err(fast.matrix(weights), slow.matrix(weights)) < 1e-12
    m = ref_slow.matrix() / ref_slow.n
    assert rel_err(ref_fast.matrix() / ref_fast.n, m) < 1e-12
    assert rel_err(fast.contract(m), slow.contract(m)) < 1e-12
    assert rel_err(fast.gram(ref_fast), slow.gram(ref_slow)) < 1e-12
    assert rel_err(fast.per_sample(), slow.per_sample()) < 1e-12
    # the contraction with the mean reference matrix is the row mean of the Gram products
    assert rel_err(fast.contract(m), slow.gram(ref_slow).mean(1)) < 1e-12
    half = fast.rows(slice(0, n // 2))
    assert rel_err(half.contract(m), slow.contract(m)[: n // 2]) < 1e-12


@pytest.mark.parametrize("side", ["right", "left", "both"])
@pytest.mark.parametrize("shape", [(5, 1, 1, 7, 3), (4, 3, 2, 2, 6), (3, 4, 1, 9, 9)])
def test_dense_ones_column_equals_concatenation(f64, side, shape):
    n, t, g, p, q = shape
    torch.manual_seed(0)

    def blocks(n_rows):
        left, right = torch.randn(n_rows, t, g, p), torch.randn(n_rows, t, g, q)
        lo, ro = side in ("left", "both"), side in ("right", "both")
        fast = Block("b", [Segment(Dense(left, lo), Dense(right, ro))])
        slow = Block("b", [Segment(Dense(_cat_ones(left) if lo else left), Dense(_cat_ones(right) if ro else right))])
        return fast, slow

    fast, slow = blocks(n)
    ref_fast, ref_slow = blocks(n + 2)
    assert fast.segments[0].left.dim == slow.segments[0].left.dim
    assert torch.equal(fast.segments[0].right.x, slow.segments[0].right.x)
    _check_block_pair(fast, slow, ref_fast, ref_slow, n)


def test_with_ones_twice_is_refused():
    with pytest.raises(ValueError):
        Dense(torch.zeros(1, 1, 1, 2)).with_ones().with_ones()


def _patches(module, x):
    spatial = x.dim() - 2
    pads = conv_pads(module, spatial)
    if any(pads):
        x = F.pad(x, pads, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    k, s, d = module.kernel_size, module.stride, module.dilation
    if spatial == 1:
        x, k, s, d = x.unsqueeze(2), (1, k[0]), (1, s[0]), (1, d[0])
    return Patches(x, tuple(k), tuple(s), tuple(d), module.groups)


CONVS = [
    (nn.Conv2d, dict(in_channels=2, out_channels=4, kernel_size=3, padding="same"), (9, 8)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                     groups=2, padding_mode="reflect"), (9, 10)),
    (nn.Conv2d, dict(in_channels=3, out_channels=3, kernel_size=2, groups=3, bias=False), (5, 5)),
    (nn.Conv1d, dict(in_channels=2, out_channels=4, kernel_size=5, stride=2, padding=2, padding_mode="circular"), (13,)),
    (nn.Conv1d, dict(in_channels=4, out_channels=4, kernel_size=3, dilation=2, groups=4, padding="same"), (11,)),
]


@pytest.mark.parametrize("cls,kwargs,spatial", CONVS)
def test_patches_factor_equals_unfolded_patches(f64, cls, kwargs, spatial):
    torch.manual_seed(1)
    conv = cls(**kwargs)
    g = conv.groups

    def blocks(n_rows):
        x = torch.randn(n_rows, conv.in_channels, *spatial)
        grad = torch.randn(conv(x).shape)
        patches = _patches(conv, x)
        unfolded = unfold_conv_input(conv, x)
        pos = unfolded.shape[1]
        assert patches.tokens == pos
        left = Dense(grad.reshape(n_rows, g, conv.out_channels // g, pos).permute(0, 3, 1, 2))
        right_slow = Dense(unfolded.reshape(n_rows, pos, g, -1))
        if conv.bias is not None:
            return (Block("c", [Segment(left, patches.with_ones())]),
                    Block("c", [Segment(left, Dense(_cat_ones(right_slow.x)))]))
        return Block("c", [Segment(left, patches)]), Block("c", [Segment(left, right_slow)])

    fast, slow = blocks(5)
    ref_fast, ref_slow = blocks(4)
    assert torch.equal(fast.segments[0].right.x, slow.segments[0].right.x)
    _check_block_pair(fast, slow, ref_fast, ref_slow, 5)


def test_conv_reference_matrix_is_the_weight_gradient(f64):
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    x = torch.randn(7, 4, 8, 8)
    out = conv(x)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    left = Dense(grad.reshape(7, 2, 3, -1).permute(0, 3, 1, 2))
    m = Block("c", [Segment(left, _patches(conv, x).with_ones())]).matrix()
    assert rel_err(m[..., :-1].reshape(conv.weight.shape), conv.weight.grad) < 1e-12
    assert rel_err(m[..., -1].reshape(-1), conv.bias.grad) < 1e-12


def test_ones_factor_shape():
    f = ones_factor(Dense(torch.zeros(3, 4, 2, 5)))
    assert f.x.shape == (3, 4, 2, 1) and bool((f.x == 1).all())
