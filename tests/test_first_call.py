"""First calls are cheap and rare: a verdict carries over to other batch sizes and sequence lengths with the same
size pattern (``verify.signature``), LAI verifies on the smallest alike slice, and the probe's random weighting of the
samples still catches what the per-sample probe caught."""

import pytest
import torch
from conftest import rel_err
from test_verification import CE, PositionsNoBatch, ghost_routed, loop_scores, token_data
from torch import nn

import influence
from influence import verify
from influence.batch import take

TOL = 1e-9


class TokenMLP(nn.Module):
    def __init__(self, vocab=7, d=5):
        super().__init__()
        self.tok, self.lin, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.lin(self.tok(ids))))


def _probes(fn):
    start = verify.probe_count()
    fn()
    return verify.probe_count() - start


def test_signature_keeps_the_size_pattern_not_the_sizes(f64):
    model = TokenMLP().eval()
    sig = lambda n, t: verify.signature(model, token_data(n, t, n_ref=1)[0])  # noqa: E731
    assert sig(4, 9) == sig(6, 11) == sig(2, 12)  # ragged batches, other lengths
    assert sig(4, 9) != sig(4, 4)  # a sequence as long as the batch: its own verdict
    assert sig(4, 9) != sig(1, 9)  # a batch of one broadcasts
    assert sig(4, 9) != sig(5, 9)  # 5 is a parameter dimension (d): its own verdict
    model.head.weight.requires_grad_(False)
    assert sig(4, 9) != verify.signature(TokenMLP().eval(), token_data(4, 9, n_ref=1)[0])


@pytest.mark.parametrize("estimator", ["ghost", "lai", "lai-last"])
def test_a_verdict_is_reused_across_batch_sizes_and_lengths(f64, estimator):
    torch.manual_seed(0)
    model = TokenMLP().eval()
    call = lambda tr, rf: influence.Session(model, CE, rf, estimator=estimator, lr=0.1).score(tr)  # noqa: E731
    assert _probes(lambda: call(*token_data(4, 9, n_ref=6))) == 1
    for n, t in ((6, 9), (8, 11), (2, 13)):  # the last partial batch, dynamically padded text
        train, ref = token_data(n, t, n_ref=6)
        assert _probes(lambda: call(train, ref)) == 0
        if estimator == "ghost":
            assert rel_err(call(train, ref).scores, loop_scores(model, CE, train, ref, 0.1)) < TOL
    assert _probes(lambda: call(*token_data(6, 6, n_ref=6))) == 1  # n == T: probed on its own


def test_a_size_coincidence_is_caught_whichever_size_came_first(f64):
    """``PositionsNoBatch`` (position embedding on arange(T), no batch dimension) is routed by the shape check when
    n != T and by the probe when n == T; either verdict keeps it routed at the other sizes, and Ghost equals the
    per-sample loop everywhere."""
    torch.manual_seed(0)
    for first in ((4, 4), (3, 5)):
        model = PositionsNoBatch().eval()
        for n, t in (first, (5, 7), (6, 6), (2, 9)):
            train, ref = token_data(n, t, n_ref=n)
            r, _ = ghost_routed(model, train, ref)
            assert r.routed_to_exact == ["pos.weight"], (first, n, t)
            assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL


def test_lai_verifies_on_the_smallest_alike_slice(f64, monkeypatch):
    torch.manual_seed(0)
    model = TokenMLP().eval()
    seen = []
    real = verify.verifier.verified_capture
    monkeypatch.setattr(verify.verifier, "verified_capture", lambda m, l, b, pl, n, *a, **k: seen.append(n) or
                        real(m, l, b, pl, n, *a, **k))
    train, ref = token_data(16, 9, n_ref=32)
    influence.lai(model, CE, train, ref, lr=0.1)
    assert seen == [2]  # one verification capture, of 2 samples (the reference batch's signature)
    sub = take(ref, slice(0, 2))
    assert verify.signature(model, sub) == verify.signature(model, ref)


def test_the_weighted_probe_catches_a_swap_that_keeps_the_sums(f64, monkeypatch):
    """A rule that gives every sample its neighbour's factors keeps the batch sums (the sum check passes); the
    random weighting of the samples does not, and the parameters are routed (Ghost exact)."""
    from influence.layers.linear import LinearRule
    original = LinearRule.ghost_pieces

    def swapped(self, module, inp, grad_out, ctx):
        return original(self, module, tuple(t.roll(1, 0) for t in inp) if isinstance(inp, tuple) else inp.roll(1, 0),
                        grad_out.roll(1, 0), ctx)

    monkeypatch.setattr(LinearRule, "ghost_pieces", swapped)
    torch.manual_seed(0)
    model = TokenMLP().eval()
    train, ref = token_data(4, 9, n_ref=3)
    r, caught = ghost_routed(model, train, ref)
    assert {"lin.weight", "head.weight"} <= set(r.routed_to_exact) and caught
    why = " ".join(verify.cached(model, verify.signature(model, train)).values())
    assert "weighted at random" in why
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL
