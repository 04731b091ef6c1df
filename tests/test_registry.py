"""The layer-rule registry: user rules, matching by type and forward, and every consumer reading it."""

import math
import warnings

import pytest
import torch
from conftest import rel_err
from torch import nn

import influence
from influence.factors import Dense
from influence.layers import (
    EmbeddingRule,
    LayerRule,
    LinearRule,
    TheoryFactor,
    registered_rules,
    rule_for,
    tokens,
    weight_bias_pieces,
    with_bias,
)

CE = influence.cross_entropy


def make_dense_class():
    """A fresh user layer class (so registering its rule in one test cannot affect another)."""
    class MyDense(nn.Module):
        """y = x @ W^T + b with its own parameters and forward (no nn.Linear inside)."""

        def __init__(self, d_in, d_out):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
            self.bias = nn.Parameter(0.1 * torch.randn(d_out))

        def forward(self, x):
            return x @ self.weight.T + self.bias
    return MyDense


def make_rule(cls):
    class MyDenseRule(LayerRule):
        name = "MyDense"
        types = (cls,)
        shareable = True

        def ghost_pieces(self, m, inp, grad_out, ctx):
            d_out, d_in = m.weight.shape
            a, b = Dense(tokens(inp, d_in)), Dense(tokens(grad_out, d_out))
            return weight_bias_pieces(m.weight, m.bias, b, a, ctx)

        def lai_activation(self, m, inp, ctx):
            x = with_bias(tokens(inp, m.weight.shape[1]), ctx.scored(m.weight), ctx.scored(m.bias))
            return None if x is None else Dense(x)

        def theory_factor(self, m, inp, ctx):
            n, (d_out, d_in) = inp.shape[0], m.weight.shape
            x = with_bias(tokens(inp, d_in), ctx.scored(m.weight), ctx.scored(m.bias))
            t = x.shape[1]
            return TheoryFactor(Dense(x), lambda j: j.reshape(n, j.shape[1], 1, t, d_out), "token")
    return MyDenseRule()


def data(n=5, n_ref=3, d=4, k=3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n + n_ref, d, generator=g), torch.randint(0, k, (n + n_ref,), generator=g)
    return (x[:n], y[:n]), (x[n:], y[n:])


def test_registered_user_rule_is_read_by_every_consumer(f64):
    MyDense = make_dense_class()
    torch.manual_seed(0)
    model = nn.Sequential(MyDense(4, 6), nn.Tanh(), MyDense(6, 3)).eval()
    train, ref = data()
    ex = influence.exact(model, CE, train, ref, lr=0.1)
    assert rule_for(model[0]) is None
    with pytest.warns(influence.RoutedToExactWarning, match="no layer rule for MyDense"):
        before = influence.ghost(model, CE, train, ref, lr=0.1)
    assert len(before.routed_to_exact) == 4

    rule = make_rule(MyDense)
    assert influence.register_layer(rule) is rule and registered_rules()[0] is rule and rule_for(model[0]) is rule
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.RoutedToExactWarning)
        gh = influence.ghost(model, CE, train, ref, lr=0.1)
        la = influence.lai(model, CE, train, ref, lr=0.1)
        last = influence.lai(model, CE, train, ref, lr=0.1, layers="last")
    # Ghost: native and exact
    assert gh.routed_to_exact == [] and rel_err(gh.scores, ex.scores) < 1e-10
    # LAI: both layers have a term; the last one is exact on the head
    assert set(la.per_layer) == {"0", "2"} and la.skipped == []
    ex_head = influence.exact(model, CE, train, ref, lr=0.1, params=["2.weight", "2.bias"])
    assert rel_err(last.scores, ex_head.scores) < 1e-10
    # TracIn's last layer finds the head through the registry
    tr = influence.tracin(model, CE, train, ref, checkpoints=[(model.state_dict(), 0.1)], last_layer=True)
    assert rel_err(tr.scores, ex_head.scores) < 1e-10
    # theory: the decomposition Ghost - LAI holds per layer through the rule's theory factor
    from theory.decomposition import decomposition
    from theory.terms import build_side
    side = build_side(model, CE, train)
    assert {k: t.kind for k, t in side.terms.items()} == {"0": "token", "2": "token"}
    dec = decomposition(model, CE, train, ref, lr=0.1)
    for name in ("0", "2"):  # the output layer's term is zero: compare on the scale of its Ghost term
        diff = dec[name] - (gh.per_layer[name] - la.per_layer[name])
        assert diff.abs().max() < 1e-8 * gh.per_layer[name].abs().max()
    assert dec["0"].abs().max() > 1e-6 * gh.per_layer["0"].abs().max()  # a real, nonzero term
    # curation signals
    from influence.curation.signals import score_batch
    for signal, want in (("ghost", gh.scores), ("lai", la.scores)):
        assert rel_err(score_batch(model, CE, train, ref, signal, 0.1).values, want) < 1e-10


def test_subclass_with_its_own_forward_is_not_its_base():
    class Positions(nn.Embedding):
        """Builds its ids from an attention mask (as OPT's learned positions do)."""

        def forward(self, mask):
            return super().forward((mask.cumsum(1) - 1).clamp(min=0))

    class Renamed(nn.Embedding):
        pass

    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert rule_for(Positions(8, 3)) is not rule_for(nn.Embedding(8, 3))
    assert isinstance(rule_for(Renamed(8, 3)), EmbeddingRule) and not EmbeddingRule().matches(Positions(8, 3))
    assert rule_for(MyLinear(3, 2)) is not rule_for(nn.Linear(3, 2)) and not LinearRule().matches(MyLinear(3, 2))
    assert isinstance(rule_for(nn.Linear(3, 2)), LinearRule)
    assert rule_for(nn.LayerNorm(3)).lai is False and rule_for(nn.ReLU()) is None


def test_subclass_with_its_own_forward_scores_right(f64):
    """Whether a rule for such subclasses exists (then native) or not (then routed to Exact), the number is right;
    the nn.Embedding rule never reads the mask as ids."""
    class Positions(nn.Embedding):
        def forward(self, mask):
            return super().forward((mask.cumsum(1) - 1).clamp(min=0))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.head = nn.Embedding(6, 4), Positions(8, 4), nn.Linear(4, 3)

        def forward(self, ids, mask):
            return self.head(torch.tanh(self.tok(ids) + self.pos(mask))).mean(1)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 6, (7, 5), generator=g)
    mask = torch.ones(7, 5, dtype=torch.long)
    mask[:, :2] = (torch.rand(7, 2, generator=g) > 0.5).long()
    y = torch.randint(0, 3, (7,), generator=g)
    train, ref = ((ids[:4], mask[:4]), y[:4]), ((ids[4:], mask[4:]), y[4:])
    model = Model().eval()
    gh = influence.ghost(model, CE, train, ref, lr=0.1, fallback="exact")
    assert gh.routed_to_exact in ([], ["pos.weight"])
    assert rel_err(gh.scores, influence.exact(model, CE, train, ref, lr=0.1).scores) < 1e-10


def test_later_registration_takes_precedence():
    class Tagged(LinearRule):
        name = "tagged"

    lin = nn.Linear(3, 2)
    before = rule_for(lin)
    tagged = Tagged()
    influence.register_layer(tagged)
    try:
        assert rule_for(lin) is tagged
    finally:
        from influence.layers import base
        base._RULES.remove(tagged)
    assert rule_for(lin) is before
    with pytest.raises(TypeError, match="LayerRule"):
        influence.register_layer(object())


def test_theory_covers_hf_conv1d(f64):
    """theory.terms reads the registry, so transformers' Conv1D (GPT-2's layer) has a per-layer term and the
    decomposition Ghost - LAI holds on it."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    from theory.decomposition import decomposition
    from theory.terms import build_side

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.Tanh(), Conv1D(3, 6)).eval()
    train, ref = data()
    assert {k: t.kind for k, t in build_side(model, CE, train).terms.items()} == {"0": "token", "2": "token"}
    gh = influence.ghost(model, CE, train, ref, lr=0.1, fallback="error")
    la = influence.lai(model, CE, train, ref, lr=0.1, fallback="error")
    assert rel_err(gh.scores, influence.exact(model, CE, train, ref, lr=0.1).scores) < 1e-10
    dec = decomposition(model, CE, train, ref, lr=0.1)
    for name in ("0", "2"):
        diff = dec[name] - (gh.per_layer[name] - la.per_layer[name])
        assert diff.abs().max() < 1e-8 * gh.per_layer[name].abs().max()
    assert dec["0"].abs().max() > 1e-6 * gh.per_layer["0"].abs().max()
