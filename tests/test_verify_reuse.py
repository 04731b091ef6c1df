"""The sum check's projections and the reuse of its autograd gradients.

``influence.projection`` projects autograd's gradients where each parameter lies in its block's matrix (no packed
matrix): equal to projecting the packed matrix, for every layer family. ``cap.checked`` holds, for every block that
passed, autograd's gradient of sum_i l_i in the block's layout (packed when read), and a reference side uses it
instead of summing the factors (same scores, float64); a block that fails the check is never reused.
"""

import pytest
import torch
from conftest import rel_err
from test_verification import OutsideUse, clf_data, loop_scores
from torch import nn

import influence
from influence import verify
from influence.capture import capture_backward, factor_blocks, plan
from influence.factors import oriented
from influence.projection import bilinear, directions, factored, pack, projected, projectors
from influence.scoring import ReferenceSide

CE = influence.cross_entropy


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))


def test_checked_sums_equal_the_factored_sums(f64):
    model, (_, ref) = _mlp(), clf_data(n_ref=5)
    verify.clear(model)
    pl = plan(model, "auto")
    cap, blocks, new = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))
    assert not new and not cap.checked  # the first call's probe takes weighted gradients only: no batch sums
    cap2, blocks2, _ = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))  # cached verdict
    assert set(cap2.checked) == set(blocks2) == set(blocks)
    for key, block in blocks2.items():
        assert rel_err(cap2.checked[key], block.matrix()) < 1e-12


def test_failed_blocks_are_not_reused(f64):
    model, (train, ref) = OutsideUse(), clf_data(n_ref=5)
    verify.clear(model)
    pl = plan(model, "auto")
    params = pl.scored_params()
    cap = capture_backward(model, CE, ref, pl.modules, 5, "ref", params, None)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    failures = verify.sum_check(blocks, cap, pl)
    assert failures and all(k not in cap.checked for k, b in blocks.items()
                            if any(id(p) in failures for p in b.params))
    with pytest.warns(influence.RoutedToExactWarning):
        r = influence.ghost(model, CE, train, ref, 0.1)
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < 1e-8


@pytest.mark.parametrize("mode", ["auto", "materialize"])
@pytest.mark.parametrize("streamed", [False, True])
def test_reference_side_with_checked_sums_scores_the_same(f64, mode, streamed):
    model, (train, ref) = _mlp(), clf_data(n=6, n_ref=5)
    pl = plan(model, "auto")
    verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))  # the first call probes (no batch sums)
    cap, blocks, _ = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))
    tcap, tblocks, _ = verify.verified_capture(model, CE, train, pl, 6, "train", dict(pl.routed), check=False)
    a, b = ReferenceSide(6, False, mode, streamed=streamed), ReferenceSide(6, False, mode, streamed=streamed)
    a.add(blocks, 5, cap.checked)
    b.add(blocks, 5)
    contracted = [k for k, m in a.modes.items() if m == "materialize"]
    assert contracted and all(a.sums[k] is cap.checked[k] for k in contracted)  # taken, not recomputed
    sa, sb = a.score(tblocks, 6, tcap.losses), b.score(tblocks, 6, tcap.losses)
    for key in sb:
        assert rel_err(sa[key], sb[key]) < 1e-12
    ghost = influence.Session(model, CE, [ref, ref], estimator="ghost", lr=0.1, mode=mode).score(train).scores
    assert rel_err(ghost, loop_scores(model, CE, train, ref, 0.1)) < 1e-8


class ConvOutsideUse(nn.Module):
    """``conv.weight`` is also read outside ``conv``'s forward: the (all-directions-at-once) Patches projection of
    the sum check must catch it."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 16, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x)) + 0.3 * torch.nn.functional.conv2d(x.cos(), self.conv.weight, padding=1)
        return self.head(h.flatten(1))


def conv_batches():
    """A seeded training batch of 4 and reference batch of 3 images [2, 4, 4] with 3 classes."""
    g = torch.Generator().manual_seed(0)
    return ((torch.randn(4, 2, 4, 4, generator=g), torch.randint(0, 3, (4,), generator=g)),
            (torch.randn(3, 2, 4, 4, generator=g), torch.randint(0, 3, (3,), generator=g)))


def test_conv_weight_used_outside_its_module_is_caught(f64):
    torch.manual_seed(0)
    model = ConvOutsideUse()
    train, ref = conv_batches()
    with pytest.warns(influence.RoutedToExactWarning, match="conv.weight"):
        r = influence.ghost(model, CE, train, ref, 0.1)
    assert "conv.weight" in r.routed_to_exact
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < 1e-8


class Families(nn.Module):
    """One layer of most registry families: an embedding with padding, convolutions (one group and two), a
    LayerNorm, attention, a Linear without bias and one with."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.conv, self.gconv = nn.Conv1d(6, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1, groups=2)
        self.norm, self.attn = nn.LayerNorm(4), nn.MultiheadAttention(4, 2, batch_first=True)
        self.lin, self.head = nn.Linear(4, 5, bias=False), nn.Linear(5, 3)

    def forward(self, ids):
        h = torch.tanh(self.gconv(torch.tanh(self.conv(self.emb(ids).transpose(1, 2))))).transpose(1, 2)
        h = self.norm(h)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(torch.tanh(self.lin(h))).mean(1)


def _families_case():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (5, 6), generator=g)
    ids[0, :2] = 0  # padding
    return Families().eval(), CE, (ids, torch.randint(0, 3, (5,), generator=g)), 5


def _zoo_case(family):
    import zoo
    c = zoo.case(family)
    return c.model, c.loss_fn, c.ref, zoo.N_REF


@pytest.mark.parametrize("case", ["families", "gpt2", "resnet"])
def test_projected_gradients_equal_the_packed_matrix(f64, case):
    """Per block: v^T M u read from the parameters' gradients where they lie equals it on the packed matrix, and
    the factors' projection equals it on the factored sum; every one-group block has such a layout (the
    unpacked path is the one used), a grouped convolution has none (packed)."""
    model, loss_fn, batch, n = _families_case() if case == "families" else _zoo_case(case)
    pl = plan(model, "auto")
    cap = capture_backward(model, loss_fn, batch, pl.modules, n, "ref", pl.scored_params(), None, pl.rules)
    blocks, failed = factor_blocks(cap, pl, pl.context())
    assert not failed and blocks
    names = set()
    for block in blocks.values():
        left, right, _ = oriented(block.segments[0])
        shape = (left.groups, left.dim, right.dim)
        gs = [cap.param_grads[id(p)] for p in block.params]
        projs = projectors(block, shape, 2, torch.float64, gs[0].device)
        assert (projs is None) == (shape[0] > 1), block.name
        m = pack(block, gs, shape, torch.float64, gs[0].device)
        dirs = directions(shape, 2, torch.float64, gs[0].device)
        facts, mags = factored(block, dirs)
        for i, (d, fact, mag) in enumerate(zip(dirs, facts, mags)):
            auto = bilinear(d, m)
            assert abs(float(fact - bilinear(d, block.matrix()))) <= 1e-12 * float(mag)
            assert abs(float(fact - auto)) <= 1e-12 * float(mag + auto.abs())
            if projs is not None:
                assert abs(float(projected(projs[i], gs) - auto)) <= 1e-12 * float(mag + auto.abs())
        names.add(block.name)
    if case == "families":
        assert {"emb", "conv", "gconv", "norm", "attn", "lin", "head"} <= {nm.split(".")[0] for nm in names}


def test_checked_matrices_are_packed_only_when_read(f64, monkeypatch):
    packed = []
    monkeypatch.setattr(verify.compare, "pack", lambda *a: packed.append(a[0].name) or pack(*a))
    model, (_, ref) = _mlp(), clf_data(n_ref=5)
    verify.clear(model)
    pl = plan(model, "auto")
    verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))  # first call: probe and check
    cap, blocks, _ = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))
    packed.clear()
    assert set(cap.checked) == set(blocks) and all(k in cap.checked for k in blocks) and not packed
    key = next(iter(blocks))
    first = cap.checked[key]
    assert cap.checked[key] is first and packed == [blocks[key].name]  # packed once, when read
    assert rel_err(first, blocks[key].matrix()) < 1e-12


def test_a_flag_from_rounding_is_cleared_by_the_full_comparison(f64, monkeypatch):
    """With a zero screening tolerance every block is flagged by rounding alone; the full comparison passes them
    all: nothing is routed and every block is still reused."""
    full = []
    compare = verify.compare._mismatches
    monkeypatch.setattr(verify.compare, "_mismatches", lambda blocks, *a: full.extend(blocks) or compare(blocks, *a))
    model, (train, ref) = _mlp(), clf_data(n=6, n_ref=5)
    pl = plan(model, "auto")
    cap = capture_backward(model, CE, ref, pl.modules, 5, "ref", pl.scored_params(), None)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    assert verify.sum_check(blocks, cap, pl, settings=verify.Verification(screen_eps=0)) == {}
    assert set(cap.checked) == set(blocks)
    assert full  # flagged (rounding), then passed in full
    verify.clear(model)
    assert rel_err(influence.ghost(model, CE, train, ref, 0.1).scores, loop_scores(model, CE, train, ref, 0.1)) < 1e-8


class GroupedConvOutsideUse(nn.Module):
    """A grouped convolution (a block of two groups: packed, not projected in place) whose weight is also read
    outside its module."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.Linear(4 * 16, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x)) + 0.3 * torch.nn.functional.conv2d(x.cos(), self.conv.weight, padding=1,
                                                                        groups=2)
        return self.head(h.flatten(1))


def test_grouped_conv_weight_used_outside_its_module_is_caught(f64):
    torch.manual_seed(0)
    model = GroupedConvOutsideUse()
    train, ref = conv_batches()
    pl = plan(model, "auto")
    cap = capture_backward(model, CE, ref, pl.modules, 3, "ref", pl.scored_params(), None)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    assert "conv.weight" in {pl.names[k] for k in verify.sum_check(blocks, cap, pl)}  # the sum check alone
    with pytest.warns(influence.RoutedToExactWarning, match="conv.weight"):
        r = influence.ghost(model, CE, train, ref, 0.1)
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < 1e-8


@pytest.mark.parametrize("dtype,k", [(torch.float64, 1), (torch.float32, 2)])
def test_directions_per_block_follow_the_precision(dtype, k, monkeypatch):
    """One direction where the screening tolerance is far below sqrt(eps) (float64), two in float32."""
    calls = []
    monkeypatch.setattr(verify.compare, "factored", lambda block, ds, w=None: calls.extend([block.name] * len(ds)) or
                        factored(block, ds, w))
    model, (_, (x, y)) = _mlp().to(dtype), clf_data(n_ref=5)
    pl = plan(model, "auto")
    cap = capture_backward(model, CE, (x.to(dtype), y), pl.modules, 5, "ref", pl.scored_params(), None)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    assert verify.sum_check(blocks, cap, pl) == {}
    assert sorted(calls) == sorted(b.name for b in blocks.values() for _ in range(k))


@pytest.mark.parametrize("family", ["gpt_neo", "opt", "bert"])  # the largest ratios of the zoo
def test_rounding_stays_far_below_the_screening_tolerance(family):
    """The sum check's projection differs from autograd's by rounding only, in float32 and float64, by at most
    1/8 of the screening tolerance (so a flag from rounding, which costs a full comparison, stays rare)."""
    from influence.compat import tree_map
    from validation.bench.verify_cost import rounding
    model, loss_fn, batch, n = _zoo_case(family)
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        cast = tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, batch)
        assert 0 < rounding(model, loss_fn, cast, n) < verify.DEFAULT.screen_eps / 8


def test_verify_cost_reports_the_parts_of_the_overhead(capsys):
    from validation.bench import verify_cost
    out = verify_cost.main(["--tiny", "--repeats", "1", "--workloads", "mlp", "--clock", "cpu"])["mlp"]
    for key in ("ghost", "no sum check", "ref capture", "ref capture + grads", "train capture",
                "train capture + grads", "ref check ops", "train check ops", "sum check overhead",
                "weight gradient share", "check ops share", "probe overhead"):
        assert key in out
    assert out["ref check ops"] > 0 and out["train check ops"] > 0 and "weight grads" in capsys.readouterr().out
