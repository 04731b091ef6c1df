"""``nn.MultiheadAttention`` is exact natively in Ghost (no routing to Exact), verified by the capture's own checks.

Every case: float64, Ghost with ``fallback="error"`` and RoutedToExactWarning raised as an error equals the
per-sample autograd loop (``tests/reference.py``) to rel 1e-8; LAI (all layers) returns finite scores and lists
nothing as skipped; LAI's last layer (the head) equals the reference on the head's parameters. Options the rule
does not take (unbatched inputs) go to Exact with the warning; dropout in train mode is a named error.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import rel_err
from reference import reference_scores
from torch import nn

import influence
from influence import errors as E
from influence import verify
from influence.layers import MultiheadAttentionRule, rule_for

LR, TOL, N_TRAIN = 0.1, 1e-8, 4
CE = influence.cross_entropy
D_IN, E_DIM, HEADS, CLASSES = 4, 6, 2, 3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Attn(nn.Module):
    """Linear -> MultiheadAttention -> Linear head, tokens [n, L] -> logits [n, L, 3].

    ``cross``: keys/values from a second input [n, S, D_IN] (own projections to kdim/vdim); ``mask``: "padding"
    (key_padding_mask from a per-sample input), "padding_float", "attn2d", "attn3d" (per sample and head, from an
    input), "causal" (is_causal with a causal attn_mask); ``use_weights``: the attention weights also enter the
    output (need_weights=True)."""

    def __init__(self, batch_first: bool = True, cross: bool = False, mask: str | None = None,
                 need_weights: bool = False, use_weights: bool = False, **mha) -> None:
        super().__init__()
        kdim, vdim = mha.get("kdim") or E_DIM, mha.get("vdim") or E_DIM
        self.q_in = nn.Linear(D_IN, E_DIM)
        self.k_in, self.v_in = (nn.Linear(D_IN, kdim), nn.Linear(D_IN, vdim)) if cross else (None, None)
        self.att = nn.MultiheadAttention(E_DIM, HEADS, batch_first=batch_first, **mha)
        self.head = nn.Linear(E_DIM, CLASSES)
        self.batch_first, self.cross, self.mask = batch_first, cross, mask
        self.need_weights, self.use_weights = need_weights or use_weights, use_weights

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        q = torch.tanh(self.q_in(x))
        k, v = (torch.tanh(self.k_in(memory)), torch.tanh(self.v_in(memory))) if self.cross else (q, q)
        length, source = q.shape[1], k.shape[1]
        kw: dict = {}
        if self.mask == "padding":
            kw["key_padding_mask"] = ~keep
        elif self.mask == "padding_float":
            kw["key_padding_mask"] = torch.where(keep, 0.0, -1e4).to(q.dtype)
        elif self.mask == "attn2d":
            kw["attn_mask"] = torch.ones(length, source, dtype=torch.bool).triu(1)
        elif self.mask == "attn3d":
            kw["attn_mask"] = keep.reshape(-1, length, source)
        elif self.mask == "causal":
            kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(length, dtype=q.dtype)
            kw["is_causal"] = True
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v)) if self.cross else (q.transpose(0, 1),) * 3
        out, weights = self.att(q, k, v, need_weights=self.need_weights, **kw)
        if not self.batch_first:
            out = out.transpose(0, 1)
        logits = self.head(out)
        if self.use_weights:
            logits = logits + weights[..., :CLASSES]  # attention on the first keys, one per class
        return logits


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    g = gen(seed)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model.eval()


def batch(model: Attn, n: int = 7, length: int = 5, source: int = 3, seed: int = 0):
    """((inputs...), labels [n, L]) for ``model``; inputs as the model's forward takes them."""
    g = gen(seed)
    x = torch.randn(n, length, D_IN, generator=g, dtype=torch.float64)
    src = source if model.cross else length
    memory = torch.randn(n, src, D_IN, generator=g, dtype=torch.float64) if model.cross else None
    keep = None
    if model.mask in ("padding", "padding_float"):
        keep = torch.ones(n, src, dtype=torch.bool)
        for i in range(n):
            keep[i, src - 1 - i % (src - 1):] = False  # every sample keeps at least its first key
    elif model.mask == "attn3d":
        keep = torch.randn(n, HEADS, length, src, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n, length), generator=gen(seed + 1))
    return (x, memory, keep), y


def split(data, n_train: int = N_TRAIN):
    from influence.batch import take
    return take(data, slice(0, n_train)), take(data, slice(n_train, None))


def assert_native(model: nn.Module, data, head: tuple[str, ...] = ("head.weight", "head.bias")) -> None:
    """Ghost exact with no routing; LAI all finite, skipping only ``bias_k``/``bias_v`` (no LAI term); LAI last
    exact on the head."""
    train, ref = split(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.RoutedToExactWarning)
        r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
        lai_all = influence.lai(model, CE, train, ref, lr=LR, fallback="error")
        lai_last = influence.lai(model, CE, train, ref, lr=LR, layers="last", fallback="error")
    assert not r.routed_to_exact
    err = rel_err(r.scores, reference_scores(model, CE, train, ref, LR))
    assert err < TOL, f"ghost rel err {err:.2e}"
    extra = [n for n, p in model.named_parameters() if n.endswith((".bias_k", ".bias_v")) and p.requires_grad]
    assert torch.isfinite(lai_all.scores).all() and lai_all.skipped == extra
    assert rel_err(lai_last.scores, reference_scores(model, CE, train, ref, LR, list(head))) < TOL


CASES = {
    "self_batch_first": dict(),
    "self_seq_first": dict(batch_first=False),
    "self_seq_first_need_weights": dict(batch_first=False, need_weights=True),
    "self_no_bias": dict(bias=False),
    "cross_packed_L_ne_S": dict(cross=True),
    "cross_seq_first_L_ne_S": dict(cross=True, batch_first=False),
    "cross_kdim_vdim": dict(cross=True, kdim=5, vdim=3),
    "cross_kdim_vdim_seq_first_no_bias": dict(cross=True, kdim=5, vdim=3, batch_first=False, bias=False),
    "key_padding_mask": dict(mask="padding"),
    "key_padding_mask_need_weights": dict(mask="padding", need_weights=True),
    "key_padding_mask_float_cross": dict(mask="padding_float", cross=True),
    "attn_mask_2d": dict(mask="attn2d"),
    "attn_mask_3d_float": dict(mask="attn3d", cross=True, batch_first=False),
    "is_causal": dict(mask="causal"),
    "is_causal_need_weights": dict(mask="causal", need_weights=True),
    "add_bias_kv": dict(add_bias_kv=True),
    "add_zero_attn": dict(add_zero_attn=True),
    "bias_kv_zero_attn_padding_seq_first": dict(add_bias_kv=True, add_zero_attn=True, mask="padding",
                                                batch_first=False),
    "bias_kv_causal": dict(add_bias_kv=True, mask="causal"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ghost_native_exact(f64, name: str) -> None:
    model = seeded(Attn(**CASES[name]))
    assert isinstance(rule_for(model.att), MultiheadAttentionRule)
    assert_native(model, batch(model))


def test_seq_first_with_length_equal_to_batch(f64) -> None:
    """Seq-first inputs [L, n, E] with L == n: the batch is dimension 1, whatever the sizes."""
    model = seeded(Attn(batch_first=False))
    data = batch(model, n=8, length=4)
    assert_native(model, data)


def test_frozen_in_projection_and_frozen_out_projection(f64) -> None:
    for frozen in (("in_proj_weight", "in_proj_bias"), ("out_proj.weight", "out_proj.bias")):
        model = seeded(Attn(cross=True))
        for name in frozen:
            model.att.get_parameter(name).requires_grad_(False)
        train, ref = split(batch(model))
        with warnings.catch_warnings():
            warnings.simplefilter("error", influence.RoutedToExactWarning)
            r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
        assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL


def test_transformer_layers(f64) -> None:
    """torch's encoder and decoder layers (self- and cross-attention through nn.MultiheadAttention)."""
    for layer in (nn.TransformerEncoderLayer(E_DIM, HEADS, 8, dropout=0.0, batch_first=True),
                  nn.TransformerDecoderLayer(E_DIM, HEADS, 8, dropout=0.0, batch_first=True)):
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inp, self.layer, self.head = nn.Linear(D_IN, E_DIM), layer, nn.Linear(E_DIM, CLASSES)

            def forward(self, x):
                h = torch.tanh(self.inp(x))
                if isinstance(self.layer, nn.TransformerDecoderLayer):
                    h = self.layer(h, h[:, :3] * 2)
                else:
                    h = self.layer(h)
                return self.head(h)

        model = seeded(Net())
        (x, _, _), y = batch(Attn())
        train, ref = split((x, y))
        with warnings.catch_warnings():
            warnings.simplefilter("error", influence.RoutedToExactWarning)
            r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
            lai = influence.lai(model, CE, train, ref, lr=LR)
        assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
        assert torch.isfinite(lai.scores).all()
        assert any("attn" in name for name in lai.per_layer)


def test_ghost_equals_exact_estimator(f64) -> None:
    model = seeded(Attn(cross=True, kdim=5, vdim=3, mask="padding", batch_first=False))
    train, ref = split(batch(model))
    ghost = influence.ghost(model, CE, train, ref, lr=LR, fallback="error", pairwise=True)
    exact = influence.exact(model, CE, train, ref, lr=LR, pairwise=True)
    assert rel_err(ghost.pairwise, exact.pairwise) < TOL


def test_verification_checks_the_rule(f64, monkeypatch) -> None:
    """The capture's checks run on this rule: wrong pieces are caught by the sum check, pieces of the wrong
    sample (right sum) by the per-sample probe; either way the parameters go to Exact, with the right numbers."""
    original = MultiheadAttentionRule.ghost_pieces

    def scaled(self, module, inp, grad_out, ctx):
        return original(self, module, inp, grad_out * 1.001, ctx)

    def swapped(self, module, inp, grad_out, ctx):  # every sample gets its neighbour's factors: same sum
        return original(self, module, tuple(t.roll(1, 0) for t in inp), grad_out.roll(1, 0), ctx)

    for broken, check in ((scaled, "batch gradient"), (swapped, "sample")):
        monkeypatch.setattr(MultiheadAttentionRule, "ghost_pieces", broken)
        model = seeded(Attn(mask="padding"))
        train, ref = split(batch(model))
        probes = verify.probe_count()
        with pytest.warns(influence.RoutedToExactWarning):
            r = influence.ghost(model, CE, train, ref, lr=LR)
        assert verify.probe_count() > probes
        assert {"att.in_proj_weight", "att.out_proj.weight"} <= set(r.routed_to_exact)
        assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
        why = " ".join(verify.cached(model, verify.signature(model, train)).values())
        assert check in why
        with pytest.raises(E.UnsupportedLayerError):
            influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
        monkeypatch.undo()


def test_attention_weights_used_downstream_go_to_exact(f64) -> None:
    """need_weights=True and the weights enter the loss: the recorded output gradient does not explain the
    in-projection's gradient; the sum check routes it to Exact (the numbers stay exact)."""
    model = seeded(Attn(use_weights=True))
    train, ref = split(batch(model))
    with pytest.warns(influence.RoutedToExactWarning):
        r = influence.ghost(model, CE, train, ref, lr=LR)
    assert "att.in_proj_weight" in r.routed_to_exact
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL


class Unbatched(nn.Module):
    """MultiheadAttention called per sample on unbatched [L, E] inputs: no batch dimension to factor."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.att, self.head = nn.Linear(D_IN, E_DIM), nn.MultiheadAttention(E_DIM, HEADS), \
            nn.Linear(E_DIM, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(torch.stack([self.att(s, s, s, need_weights=False)[0] for s in h]))


def test_unbatched_inputs_route_to_exact(f64) -> None:
    model = seeded(Unbatched())
    (x, _, _), y = batch(Attn())
    train, ref = split((x, y))
    with pytest.warns(influence.RoutedToExactWarning):
        r = influence.ghost(model, CE, train, ref, lr=LR)
    assert "att.in_proj_weight" in r.routed_to_exact
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
    with pytest.raises(E.UnsupportedLayerError):
        influence.ghost(model, CE, train, ref, lr=LR, fallback="error")


def test_dropout_in_train_mode_is_refused(f64) -> None:
    model = seeded(Attn())
    model.att.dropout = 0.1
    model.att.train()
    train, ref = split(batch(model))
    for estimator in (influence.ghost, influence.lai, influence.exact):
        with pytest.raises(E.StochasticModuleError, match="att"):
            estimator(model, CE, train, ref, lr=LR)
    model.att.dropout = 0.0  # train mode without dropout is deterministic: native and exact
    assert_native(model, batch(model))


class AttentionOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.att = nn.Linear(D_IN, E_DIM), nn.MultiheadAttention(E_DIM, HEADS, batch_first=True)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.att(h, h, h, need_weights=False)[0]


def test_attention_as_output_layer(f64) -> None:
    """Ghost is exact; last-layer LAI refuses it (its in-projection acts before the attention)."""
    model = seeded(AttentionOut())
    (x, _, _), _ = batch(Attn())
    y = torch.randint(0, E_DIM, (x.shape[0], x.shape[1]), generator=gen(5))
    train, ref = split((x, y))
    r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
    with pytest.raises(E.InfluenceError, match="att"):
        influence.lai(model, CE, train, ref, lr=LR, layers="last")
    assert torch.isfinite(influence.lai(model, CE, train, ref, lr=LR).scores).all()


def test_theory_refuses_attention_by_name(f64) -> None:
    """The theory has no per-layer Jacobian layout for attention: a named refusal, not a crash."""
    from theory import terms
    model = seeded(Attn())
    train, _ = split(batch(model))
    with pytest.raises(NotImplementedError, match="att"):
        terms.build_side(model, CE, train)


def test_tracin_last_layer_and_self_influence(f64) -> None:
    model = seeded(Attn(cross=True, mask="padding"))
    train, ref = split(batch(model))
    r = influence.tracin(model, CE, train, ref, [(model.state_dict(), LR)], last_layer=True)
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR, ["head.weight", "head.bias"])) < TOL
    r = influence.ghost(model, CE, train, None, lr=LR, fallback="error", pairwise=True)
    assert rel_err(r.pairwise, influence.exact(model, CE, train, train, lr=LR, pairwise=True).pairwise) < TOL


def test_transformer_encoder_with_padding(f64) -> None:
    """nn.TransformerEncoder with a key padding mask: without autograd (LAI) torch would run it on nested tensors
    through fused kernels; the capture turns those paths off, so LAI reads every layer and Ghost stays native."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(9, E_DIM)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E_DIM, HEADS, 8, dropout=0.0,
                                                                        batch_first=True), 2)
            self.head = nn.Linear(E_DIM, CLASSES)

        def forward(self, ids, pad):
            return self.head(self.enc(self.emb(ids), src_key_padding_mask=pad))

    model = seeded(Net())
    ids = torch.randint(0, 9, (7, 5), generator=gen(0))
    pad = torch.zeros(7, 5, dtype=torch.bool)
    pad[:, 3:] = True
    pad[0, 1:] = True
    y = torch.randint(0, CLASSES, (7, 5), generator=gen(1))
    train, ref = split(((ids, pad), y))
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.RoutedToExactWarning)
        r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
        lai = influence.lai(model, CE, train, ref, lr=LR, fallback="error")
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
    assert torch.backends.mha.get_fastpath_enabled()
    assert torch.isfinite(lai.scores).all() and {"enc.layers.0.self_attn", "enc.layers.1.linear2"} <= set(lai.per_layer)


class CausalCross(nn.Module):
    """Cross-attention with is_causal (L=5 queries, S=3 keys): torch ignores attn_mask and applies the top-left
    causal mask when need_weights is False, attn_mask otherwise."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.q, self.kv, self.head = nn.Linear(D_IN, E_DIM), nn.Linear(D_IN, E_DIM), nn.Linear(E_DIM, CLASSES)
        self.att = nn.MultiheadAttention(E_DIM, HEADS, batch_first=True, add_zero_attn=True)
        self.need_weights = need_weights

    def forward(self, x, memory):
        q, kv = torch.tanh(self.q(x)), torch.tanh(self.kv(memory))
        mask = torch.zeros(q.shape[1], kv.shape[1], dtype=torch.bool)
        return self.head(self.att(q, kv, kv, attn_mask=mask, is_causal=True, need_weights=self.need_weights)[0])


@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_cross_attention(f64, need_weights: bool) -> None:
    model = seeded(CausalCross(need_weights))
    (x, memory, _), y = batch(Attn(cross=True))
    assert_native(model, ((x, memory), y))


def test_fully_masked_sample(f64) -> None:
    """A sample whose keys are all masked: finite and exact where torch's attention gives zeros (the SDPA path),
    a named error where torch itself gives NaN (need_weights=True)."""
    model = seeded(Attn(mask="padding"))
    (x, memory, keep), y = batch(model)
    keep[2] = False
    train, ref = split(((x, memory, keep), y))
    r = influence.ghost(model, CE, train, ref, lr=LR, fallback="error")
    assert rel_err(r.scores, reference_scores(model, CE, train, ref, LR)) < TOL
    model.need_weights = True
    with pytest.raises(E.NonFiniteLossError):
        influence.ghost(model, CE, train, ref, lr=LR)


def test_lai_lists_bias_k_and_bias_v_as_skipped():
    """add_bias_kv's extra key/value tokens have no LAI term: LAI says so in result.skipped (the four linear maps
    are scored)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)

        def forward(self, x):
            h = self.emb(x)
            return self.head(self.att(h, h, h, need_weights=False)[0].mean(1))

    model = Net().double().eval()
    x, y = torch.randn(6, 5, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    r = influence.lai(model, influence.cross_entropy, (x, y), (x[:3], y[:3]), 0.1, fallback="exact")
    assert r.skipped == ["att.bias_k", "att.bias_v"] and torch.isfinite(r.scores).all()
    plain = nn.MultiheadAttention(8, 2, batch_first=True)
    model.att.bias_k, model.att.bias_v = None, None  # without the extra tokens nothing is skipped
    model.att.load_state_dict(plain.double().state_dict(), strict=False)
    assert influence.lai(model, influence.cross_entropy, (x, y), (x[:3], y[:3]), 0.1).skipped == []
