"""``Curator(refresh_every=k)``: one kept scoring session whose reference statistics are recomputed every k
curated steps. k = 1 gives exactly the per-step fresh session's scores and updates (float64); k > 1 scores the
steps in between against the statistics of the last refresh, and draws a new reference only when refreshing."""

import pytest
import torch

import influence
from influence.curation import Curator, ReferencePolicy
from validation.training.models import MLP

CE = influence.cross_entropy
LR = 0.1


def _data(n_steps=5, n=12, n_ref=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(n, 10, generator=g), torch.randint(0, 5, (n,), generator=g)) for _ in range(n_steps)]
    return batches, (torch.randn(n_ref, 10, generator=g), torch.randint(0, 5, (n_ref,), generator=g))


def _train(signal, kind, refresh_every, steps=5):
    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(16, 16), n_classes=5)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    batches, pool = _data(steps)
    ref = ReferencePolicy(kind, pool, size=8, seed=3)
    cur = Curator(CE, signal, reference=ref, on_empty="best", refresh_every=refresh_every)
    values = []
    for b in batches:
        opt.zero_grad(set_to_none=True)
        values.append(cur.step(model, opt, b).values.clone())
    return values, [p.detach().clone() for p in model.parameters()], cur


@pytest.mark.parametrize("signal", ["lai", "lai-last", "ghost"])
@pytest.mark.parametrize("kind", ["fixed", "resample"])
def test_refresh_every_step_equals_a_fresh_session_per_step(f64, signal, kind):
    kept_vals, kept_params, cur = _train(signal, kind, 1)
    fresh_vals, fresh_params, fresh = _train(signal, kind, None)
    assert cur.session is not None and fresh.session is None
    for a, b in zip(kept_vals, fresh_vals):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    for a, b in zip(kept_params, fresh_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("signal", ["lai", "ghost"])
def test_stale_statistics_between_refreshes(f64, signal):
    """k = 3: steps 0 and 3 are scored against fresh statistics; steps 1, 2 against those of step 0, which is
    what a session refreshed at step 0 and not since gives (recomputed here independently)."""
    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(16, 16), n_classes=5)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches, pool = _data(5)
    ref = ReferencePolicy("fixed", pool, size=8, seed=3)
    cur = Curator(CE, signal, reference=ref, on_empty="keep_all", refresh_every=3)
    stale = None
    for t, b in enumerate(batches):
        if t % 3 == 0:
            stale = influence.Session(model, CE, ref.sample(), estimator=signal, lr=LR)
            snapshot = [p.detach().clone() for p in model.parameters()]
        expected = stale.score(b).scores
        fresh = influence.Session(model, CE, ref.sample(), estimator=signal, lr=LR).score(b).scores
        opt.zero_grad(set_to_none=True)
        got = cur.step(model, opt, b).values
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)
        if t % 3:
            assert not torch.allclose(got, fresh, rtol=1e-6), "stale statistics should differ from fresh ones"
            assert any(not torch.equal(a, p) for a, p in zip(snapshot, model.parameters()))


def test_resample_draws_a_reference_only_when_refreshing(f64):
    calls = []

    class Counting(ReferencePolicy):
        def sample(self):
            calls.append(1)
            return super().sample()

    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(16, 16), n_classes=5)
    batches, pool = _data(7)
    cur = Curator(CE, "lai", reference=Counting("resample", pool, size=8, seed=1), lr=LR, on_empty="best",
                  refresh_every=3, warmup_steps=1)
    for b in batches:
        cur.step(model, None, b)
    assert len(calls) == 2  # 6 curated steps after one warm-up step: refreshes at curated steps 0 and 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_refresh_every_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="refresh_every"):
        Curator(CE, "lai", refresh_every=bad)


def test_other_signals_and_self_reference_build_their_own_session(f64):
    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(16, 16), n_classes=5)
    batches, pool = _data(2)
    for method, reference in [("exact", ReferencePolicy("fixed", pool, size=8)), ("lai", None),
                              ("small-loss-fixed", ReferencePolicy("fixed", pool, size=8))]:
        from influence.curation import get_method
        m = get_method(method, keep_fraction=0.5) if method == "small-loss-fixed" else method
        cur = Curator(CE, m, reference=reference, lr=LR, on_empty="best")
        cur.step(model, None, batches[0])
        assert cur.session is None


SLOW = 0.5  # seconds a slowed refresh sleeps: a step of this MLP takes milliseconds, also on a loaded machine


def test_the_step_time_includes_the_refresh_of_kept_statistics(monkeypatch):
    """A step at which the kept statistics are built or refreshed pays for it in ``score_s`` (the cost rows of
    ``lai bench`` compare k = 1 with k > 1 through it); the steps in between do not."""
    import time
    real = influence.Session.refresh

    def slow_refresh(self, *args, **kwargs):
        time.sleep(SLOW)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(influence.Session, "refresh", slow_refresh)
    torch.manual_seed(0)
    model = MLP(d_in=10, hidden=(16, 16), n_classes=5)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches, pool = _data(4)
    cur = Curator(CE, "lai", reference=ReferencePolicy("fixed", pool, size=8, seed=3), on_empty="keep_all",
                  refresh_every=2)
    times = []
    for b in batches:
        opt.zero_grad(set_to_none=True)
        times.append(cur.step(model, opt, b).score_s)
    assert times[0] >= SLOW and times[2] >= SLOW  # built at step 0, refreshed at step 2
    assert times[1] < SLOW and times[3] < SLOW  # (a slowed refresh far above a step on a loaded 2-core machine)
