"""The capture verifies itself: what the factorisation cannot see goes to Exact (with one warning) or raises.

References are per-sample autograd loops in float64 (one backward per sample), independent of torch.func.
"""

import warnings

import pytest
import torch
from conftest import rel_err
from torch import nn
from torch.nn import functional as F

import influence
from influence import verify

CE = influence.cross_entropy
TOL = 1e-8


def loop_scores(model, loss_fn, train, ref, lr):
    """lr * <grad l_i, mean_v grad l_v> by one autograd backward per sample."""
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(x, y):
        loss = loss_fn(model(x.unsqueeze(0)), y.unsqueeze(0))[0]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    ref_grad = torch.stack([grad(x, y) for x, y in zip(*ref)]).mean(0)
    return lr * torch.stack([grad(x, y) @ ref_grad for x, y in zip(*train)])


def clf_data(n=4, n_ref=3, d=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n + n_ref, d, generator=g), torch.randint(0, k, (n + n_ref,), generator=g)
    return (x[:n], y[:n]), (x[n:], y[n:])


def token_data(n, t, vocab=7, n_ref=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n + n_ref, t), generator=g)
    y = torch.randint(0, 3, (n + n_ref, t), generator=g)
    return (ids[:n], y[:n]), (ids[n:], y[n:])


class OutsideUse(nn.Module):
    """``b.weight`` is also read outside ``b``'s forward (``b`` still produces the output)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = h + 0.5 * F.linear(h.sin(), self.b.weight).sum(1, keepdim=True)
        return self.b(h)


class MatmulHead(nn.Module):
    """An output head written ``h @ emb.weight.T`` (a tied head that is no module call)."""

    def __init__(self, vocab=7, d=5):
        super().__init__()
        self.emb, self.mix = nn.Embedding(vocab, d), nn.Linear(d, d)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.emb(ids)))
        return (h @ self.emb.weight.T)[..., :3]


class PositionsNoBatch(nn.Module):
    """Position embedding on ``arange(T)`` with no batch dimension, as nanoGPT writes it."""

    def __init__(self, vocab=7, d=5, max_len=16):
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(vocab, d), nn.Embedding(max_len, d), nn.Linear(d, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.tok(ids) + self.pos(torch.arange(ids.shape[1]))))


class SeqFirst(nn.Module):
    """A Linear applied to a [T, n, d] tensor."""

    def __init__(self, d=4, h=5):
        super().__init__()
        self.lin, self.head = nn.Linear(d, h), nn.Linear(h, 3)

    def forward(self, x):  # x [n, T, d]
        z = torch.tanh(self.lin(x.transpose(0, 1)))  # [T, n, h]
        return self.head(z.mean(0))


class Flattened(nn.Module):
    """A Linear on flattened tokens [n*T, d] (OPT's MLP), batch-major or token-major."""

    def __init__(self, token_major=False, d=4, h=5):
        super().__init__()
        self.token_major = token_major
        self.lin, self.head = nn.Linear(d, h), nn.Linear(h, 3)

    def forward(self, x):  # x [n, T, d]
        n, t, d = x.shape
        flat = x.transpose(0, 1).reshape(t * n, d) if self.token_major else x.reshape(n * t, d)
        z = torch.tanh(self.lin(flat))
        z = z.reshape(t, n, -1).transpose(0, 1) if self.token_major else z.reshape(n, t, -1)
        return self.head(z.mean(1))


def ghost_routed(model, train, ref, loss_fn=CE, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = influence.ghost(model, loss_fn, train, ref, lr=0.1, **kw)
    routed = [w for w in caught if issubclass(w.category, influence.RoutedToExactWarning)]
    return r, routed


@pytest.mark.parametrize("case", ["outside", "matmul_head"])
def test_parameter_used_outside_its_module_goes_to_exact(f64, case):
    torch.manual_seed(0)
    if case == "outside":
        model, (train, ref), name = OutsideUse().eval(), clf_data(), "b.weight"
    else:
        model, (train, ref), name = MatmulHead().eval(), token_data(4, 3), "emb.weight"
    r, caught = ghost_routed(model, train, ref)
    assert len(caught) == 1 and name in str(caught[0].message) and "outside its module" in str(caught[0].message)
    assert r.routed_to_exact == [name]
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL
    with pytest.raises(influence.VerificationError, match=name.replace(".", r"\.")):
        influence.ghost(model, CE, train, ref, lr=0.1, fallback="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'exact' routes silently
        quiet = influence.ghost(model, CE, train, ref, lr=0.1, fallback="exact")
    assert rel_err(quiet.scores, r.scores) < 1e-12


@pytest.mark.parametrize("t", [4, 8, 5])  # T == n (probe), T == 2n (fold then probe), T not a multiple (shape)
def test_positions_without_batch_dimension(f64, t):
    torch.manual_seed(0)
    model = PositionsNoBatch().eval()
    train, ref = token_data(4, t, n_ref=4)
    r, caught = ghost_routed(model, train, ref)
    assert r.routed_to_exact == ["pos.weight"] and len(caught) == 1
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL
    la = influence.lai(model, CE, train, ref, lr=0.1, fallback="exact")
    assert "pos.weight" in la.skipped and "pos" not in la.per_layer and torch.isfinite(la.scores).all()


@pytest.mark.parametrize("t", [4, 3])  # T == n: only the probe can tell; T != n: the shape check
def test_sequence_first_linear(f64, t):
    torch.manual_seed(0)
    model = SeqFirst().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, t, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    train, ref = (x[:4], y[:4]), (x[4:], y[4:])
    r, _ = ghost_routed(model, train, ref)
    assert set(r.routed_to_exact) == {"lin.weight", "lin.bias"}
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL


@pytest.mark.parametrize("token_major", [False, True])
def test_flattened_tokens(f64, token_major):
    """Batch-major [n*T, d] inputs are exact natively; token-major ones fail the probe and go to Exact."""
    torch.manual_seed(0)
    model = Flattened(token_major).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, 4, generator=g), torch.randint(0, 3, (7,), generator=g)
    train, ref = (x[:4], y[:4]), (x[4:], y[4:])
    r, caught = ghost_routed(model, train, ref)
    assert r.routed_to_exact == (["lin.weight", "lin.bias"] if token_major else []) and bool(caught) == token_major
    assert rel_err(r.scores, loop_scores(model, CE, train, ref, 0.1)) < TOL


def test_verdict_is_cached_per_model_and_signature(f64):
    torch.manual_seed(0)
    model = PositionsNoBatch().eval()
    train, ref = token_data(4, 4, n_ref=4)
    start = verify.probe_count()
    first, _ = ghost_routed(model, train, ref)
    after_first = verify.probe_count()
    assert after_first - start == 1  # train and ref share the signature here
    second, caught = ghost_routed(model, train, ref)
    assert verify.probe_count() == after_first  # cached: no new probe
    assert second.routed_to_exact == first.routed_to_exact == ["pos.weight"] and len(caught) == 1
    assert rel_err(second.scores, first.scores) < 1e-12
    ghost_routed(model, *token_data(4, 6, n_ref=4))  # a new input signature is probed again
    assert verify.probe_count() == after_first + 1
    model.head.weight.requires_grad_(False)  # which parameters are trainable is part of the signature
    ghost_routed(model, train, ref)
    assert verify.probe_count() == after_first + 2
    other = PositionsNoBatch().eval()  # and so is the model object
    ghost_routed(other, train, ref)
    assert verify.probe_count() == after_first + 3


def test_lai_reads_the_same_verdict(f64):
    torch.manual_seed(0)
    model = OutsideUse().eval()
    train, ref = clf_data()
    with pytest.raises(influence.VerificationError, match=r"b\.weight"):
        influence.lai(model, CE, train, ref, lr=0.1, fallback="error")
    start = verify.probe_count()
    with pytest.warns(influence.RoutedToExactWarning, match=r"skipped by LAI: b\.weight"):
        la = influence.lai(model, CE, train, ref, lr=0.1)
    assert verify.probe_count() == start  # the verdict computed above is reused
    assert la.skipped == ["b.weight"] and set(la.per_layer) == {"a", "b"}
    # b's remaining term is its bias: (0 + 1)(g_i . g_v)
    _, g_tr = influence.losses.output_gradient(CE, model(train[0]).detach(), train[1])
    _, g_rf = influence.losses.output_gradient(CE, model(ref[0]).detach(), ref[1])
    assert rel_err(la.per_layer["b"], 0.1 * (g_tr @ g_rf.T).mean(1)) < 1e-12
    # the output layer's weight cannot be factored, so last-layer LAI scores its bias only and says so
    last = influence.lai(model, CE, train, ref, lr=0.1, layers="last", fallback="exact")
    assert last.skipped == ["b.weight"] and rel_err(last.scores, la.per_layer["b"]) < 1e-12


def test_lai_last_needs_only_the_output_layer(f64):
    """An unsupported layer elsewhere does not stop last-layer LAI, which equals Exact on the head."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(x * self.w))

    torch.manual_seed(0)
    model = Odd().eval()
    train, ref = clf_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last = influence.lai(model, CE, train, ref, lr=0.1, layers="last", fallback="error")
    ex = influence.exact(model, CE, train, ref, lr=0.1, params=["head.weight", "head.bias"])
    assert rel_err(last.scores, ex.scores) < 1e-12 and last.skipped == []


def test_output_check_is_identity_not_address(f64):
    """A slice of the head output shares its storage address but is not the head output."""
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 5)

        def forward(self, x):
            return self.head(x)[:, :3]

    train, ref = clf_data()
    with pytest.raises(influence.InfluenceError, match="not the model output"):
        influence.lai(Sliced().eval(), CE, train, ref, lr=0.1, layers="last")


@pytest.mark.parametrize("est", [influence.ghost, influence.lai, influence.exact])
@pytest.mark.parametrize("module", [nn.Dropout(0.1), nn.AlphaDropout(0.1), nn.RReLU()])
def test_stochastic_modules_in_train_mode_are_refused(est, module):
    model = nn.Sequential(nn.Linear(4, 5), module, nn.Linear(5, 3))
    model[1].train()
    train, ref = clf_data()
    with pytest.raises(influence.StochasticModuleError, match=rf"1: {type(module).__name__} is in train mode"):
        est(model, CE, train, ref, lr=0.1)
    model.eval()
    est(model, CE, train, ref, lr=0.1)
    model.train()
    model[1] = nn.Dropout(0.0)  # a zero rate is deterministic
    est(model, CE, train, ref, lr=0.1)


class SometimesOutside(nn.Module):
    """``b.weight`` is read outside ``b``'s forward only for samples whose first feature exceeds 2.5: a use that
    depends on the data, so a verdict computed on other batches of the same signature says nothing about it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        gate = (x[:, :1] > 2.5).to(h.dtype)
        return self.b(h + gate * 0.5 * F.linear(h.sin(), self.b.weight)[:, :1])


def _gated_batch(n, trigger, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g, dtype=dtype).clamp(-2, 2), torch.randint(0, 3, (n,), generator=g)
    if trigger:
        x[n // 2, 0] = 3.0  # neither the first nor the last sample (those the probe compares)
    return x, y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_use_outside_the_module_that_depends_on_the_data_is_caught_on_the_call_it_appears(dtype):
    """The verdict cached from clean batches is clean; a later reference batch of the same signature that
    triggers the outside use is caught by that call's sum check (no new probe) and routed to Exact."""
    torch.manual_seed(0)
    model = SometimesOutside().to(dtype).eval()
    train, clean, dirty = (_gated_batch(5, False, 0, dtype), _gated_batch(4, False, 1, dtype),
                           _gated_batch(4, True, 2, dtype))
    first, caught = ghost_routed(model, train, clean)
    assert not caught and first.routed_to_exact == []
    probes = verify.probe_count()
    r, caught = ghost_routed(model, train, dirty)
    assert verify.probe_count() == probes and len(caught) == 1 and r.routed_to_exact == ["b.weight"]
    if dtype == torch.float64:
        assert rel_err(r.scores, loop_scores(model, CE, train, dirty, 0.1)) < TOL


def test_float32_outside_use_is_caught_by_the_sum_check():
    from influence.capture import capture_backward, factor_blocks, plan
    torch.manual_seed(0)
    model = OutsideUse().float().eval()
    _, (x, y) = clf_data(n_ref=6)
    pl = plan(model, "auto")
    cap = capture_backward(model, CE, (x.float(), y), pl.modules, 6, "ref", pl.scored_params(), None)
    blocks, _ = factor_blocks(cap, pl, pl.context())
    assert [pl.names[k] for k in verify.sum_check(blocks, cap, pl)] == ["b.weight"]


@pytest.mark.parametrize("name", ["mlp", "transformer", "cnn", "cnn1d"])
def test_float32_models_pass_the_sum_check(name):
    """No false alarm from rounding in float32: every block passes the projection (none needs the full
    comparison) and is kept for reuse; Ghost routes nothing."""
    from influence.capture import capture_backward, factor_blocks, plan
    from validation.bench.workloads import build_workload
    w = build_workload(name, tiny=True)
    gen = torch.Generator().manual_seed(0)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    assert next(w.model.parameters()).dtype == torch.float32
    pl = plan(w.model, "auto")
    cap = capture_backward(w.model, w.loss_fn, ref, pl.modules, w.spec.n_ref, "ref", pl.scored_params(), None,
                           pl.rules)
    blocks, failed = factor_blocks(cap, pl, pl.context())
    flagged = []
    compare = verify.compare._mismatches
    verify.compare._mismatches = lambda blocks, *a: flagged.extend(blocks) or compare(blocks, *a)
    try:
        assert not failed and verify.sum_check(blocks, cap, pl) == {} and set(cap.checked) == set(blocks)
    finally:
        verify.compare._mismatches = compare
    assert not flagged
    r, caught = ghost_routed(w.model, train, ref, loss_fn=w.loss_fn)
    assert not caught and r.routed_to_exact == [] and torch.isfinite(r.scores).all()


def test_a_use_outside_the_module_that_depends_on_the_data_in_a_training_batch(f64):
    torch.manual_seed(0)
    model = SometimesOutside().eval()
    clean, ref, dirty = (_gated_batch(5, False, 0, torch.float64), _gated_batch(4, False, 1, torch.float64),
                         _gated_batch(5, True, 2, torch.float64))
    r0, warned0 = ghost_routed(model, clean, ref)  # the verdict for this signature: clean
    assert r0.routed_to_exact == [] and not warned0
    r, warned = ghost_routed(model, dirty, ref)  # same signature, verdict cached: the training capture's check
    assert r.routed_to_exact and warned  # routes the weight used outside, with the warning
    assert rel_err(r.scores, loop_scores(model, CE, dirty, ref, 0.1)) < TOL
    other = SometimesOutside().eval()  # a kept session (reference statistics reused) sees the dirty batch later
    sess = influence.Session(other, CE, ref, estimator="ghost", lr=0.1, fallback="exact", refresh_every=4)
    assert sess.score(clean).routed_to_exact == []
    got = sess.score(dirty)
    assert got.routed_to_exact and rel_err(got.scores, loop_scores(other, CE, dirty, ref, 0.1)) < TOL


def test_verify_reference_skips_the_training_check_and_names_its_choices(f64):
    """``verify="reference"`` (faster) does not see a data-dependent outside use in a training batch once the
    verdict is cached - the documented price; the default ``"every"`` does (test above). Bad values are named."""
    torch.manual_seed(0)
    model = SometimesOutside().eval()
    clean, ref, dirty = (_gated_batch(5, False, 0, torch.float64), _gated_batch(4, False, 1, torch.float64),
                         _gated_batch(5, True, 2, torch.float64))
    ghost_routed(model, clean, ref, verify="reference")
    r, warned = ghost_routed(model, dirty, ref, verify="reference")
    assert r.routed_to_exact == [] and not warned
    assert rel_err(r.scores, loop_scores(model, CE, dirty, ref, 0.1)) > TOL  # the gap the option accepts
    with pytest.raises(ValueError, match="verify must be one of"):
        influence.ghost(model, CE, clean, ref, 0.1, verify="never")
    with pytest.raises(ValueError, match="verify must be one of"):
        influence.Session(model, CE, ref, estimator="ghost", lr=0.1, verify="sometimes")
