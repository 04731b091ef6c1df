"""The sum check's autograd gradients are reused: ``cap.checked`` holds, for every block that passed, autograd's
gradient of sum_i l_i in the block's layout, and a reference side uses it instead of summing the factors
(same scores, float64); a block that fails the check is never reused."""

import pytest
import torch
from torch import nn

import influence
from influence import verify
from influence.capture import capture_backward, factor_blocks, plan
from influence.scoring import ReferenceSide
from conftest import rel_err
from test_verification import OutsideUse, clf_data, loop_scores

CE = influence.cross_entropy


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))


def test_checked_sums_equal_the_factored_sums(f64):
    model, (_, ref) = _mlp(), clf_data(n_ref=5)
    verify.clear(model)
    pl = plan(model, "auto")
    cap, blocks, new = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))
    assert not new and set(cap.checked) == set(blocks)
    for key, block in blocks.items():
        assert rel_err(cap.checked[key], block.matrix()) < 1e-12
    cap2, blocks2, _ = verify.verified_capture(model, CE, ref, pl, 5, "ref", dict(pl.routed))  # cached verdict
    assert set(cap2.checked) == set(blocks2)


def test_failed_blocks_are_not_reused(f64):
    model, (train, ref) = OutsideUse(), clf_data(n_ref=5)
    verify.clear(model)
    pl = plan(model, "auto")
    params = pl.scored_params()
    cap = capture_backward(model, CE, ref, pl.modules, 5, "ref", params, [])
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


def test_conv_weight_used_outside_its_module_is_caught(f64):
    torch.manual_seed(0)
    model = ConvOutsideUse()
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(4, 2, 4, 4, generator=g), torch.randint(0, 3, (4,), generator=g))
    ref = (torch.randn(3, 2, 4, 4, generator=g), torch.randint(0, 3, (3,), generator=g))
    with pytest.warns(influence.RoutedToExactWarning, match="conv.weight"):
        r = influence.ghost(model, CE, train, ref, 0.1)
    assert "conv.weight" in r.routed_to_exact
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < 1e-8
