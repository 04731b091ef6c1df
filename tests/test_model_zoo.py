"""Tiny random models of every common ``transformers`` family (``tests/zoo.py``), float64, padded batches.

* Ghost equals Exact (rel 1e-8) without any fallback (``fallback="error"``) on every family the layer registry
  covers; where it does not (``ROUTED``), ``fallback="auto"`` routes exactly those parameters to Exact and the
  total still equals Exact.
* Exact equals the per-sample autograd reference (``tests/reference.py``).
* LAI over all layers and over the last layer returns finite scores; LAI's last layer equals Exact on the output
  layer's parameters (on an untied copy where the head is tied to the input embedding).
* Left padding and a fully padded sample keep every loss finite in float64 (masked attention rows).
"""

import warnings

import pytest
import torch

pytest.importorskip("transformers", reason='the model zoo needs the optional extra: pip install -e ".[hf]"')

import zoo  # noqa: E402
from conftest import rel_err  # noqa: E402
from reference import reference_scores  # noqa: E402

import influence  # noqa: E402
from influence.batch import call_model, output_tensor  # noqa: E402

TOL, LR = 1e-8, 0.1
FAMILIES = list(zoo.FAMILIES)
#: parameters the registry does not factor natively, by family (scored by Exact under fallback="auto")
ROUTED: dict[str, set[str]] = {
    # T5's relative position bias: an nn.Embedding looked up with bucket ids [q, k] that have no batch dimension,
    # broadcast over the batch; its per-sample gradient is not in the layer's output gradient (a sum over samples)
    "t5": {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"},
}


@pytest.fixture(scope="module", autouse=True)
def _float64_one_thread(one_thread):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


_CACHE: dict[str, tuple] = {}


def built(family: str):
    """(case, exact result) per family, built once per module."""
    if family not in _CACHE:
        c = zoo.case(family)
        _CACHE[family] = (c, influence.exact(c.model, c.loss_fn, c.train, c.ref, lr=LR))
    return _CACHE[family]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, caught


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_equals_autograd_reference(family):
    c, ex = built(family)
    assert rel_err(ex.scores, reference_scores(c.model, c.loss_fn, c.train, c.ref, LR)) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_ghost_equals_exact(family):
    c, ex = built(family)
    if family in ROUTED:
        gh, caught = quiet(influence.ghost, c.model, c.loss_fn, c.train, c.ref, lr=LR)
        assert set(gh.routed_to_exact) == ROUTED[family]
        assert sum(issubclass(w.category, influence.RoutedToExactWarning) for w in caught) == 1
    else:
        gh = influence.ghost(c.model, c.loss_fn, c.train, c.ref, lr=LR, fallback="error")
        assert not gh.routed_to_exact
    assert rel_err(gh.scores, ex.scores) < TOL
    assert set(gh.per_layer) == set(ex.per_layer)
    again, _ = quiet(influence.ghost, c.model, c.loss_fn, c.train, c.ref, lr=LR)  # verdict cached: graph check only
    assert torch.equal(again.scores, gh.scores) and again.routed_to_exact == gh.routed_to_exact
    for k in ex.per_layer:
        assert rel_err(gh.per_layer[k], ex.per_layer[k]) < TOL, k


@pytest.mark.parametrize("layers", ["all", "last"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lai_is_finite(family, layers):
    c, _ = built(family)
    la, _ = quiet(influence.lai, c.model, c.loss_fn, c.train, c.ref, lr=LR, layers=layers)
    assert la.scores.shape == (zoo.N_TRAIN,) and torch.isfinite(la.scores).all()
    assert la.per_layer


@pytest.mark.parametrize("family", FAMILIES)
def test_lai_last_equals_exact_on_the_head(family):
    c, _ = built(family)
    model, names = zoo.untied_head(c)
    ex = influence.exact(model, c.loss_fn, c.train, c.ref, lr=LR, params=names)
    la, _ = quiet(influence.lai, model, c.loss_fn, c.train, c.ref, lr=LR, layers="last")
    assert rel_err(la.scores, ex.scores) < TOL


CAUSAL = [f for f in FAMILIES if f not in ("bert", "distilbert", "roberta", "t5", "vit", "resnet")]


@pytest.mark.parametrize("family", CAUSAL + ["bert", "t5"])
def test_fully_masked_rows_stay_finite(family):
    """Sample 1 left-padded, sample 2 all padding: every output finite in float64 (eager softmax in float32 used
    to turn finfo(float64).min into -inf and such rows into NaN), and Exact still scores them."""
    c, _ = built(family)
    x, y = c.train
    x = {k: v.clone() for k, v in x.items()}
    for key in [k for k in x if k.endswith("attention_mask")]:
        x[key][1] = torch.flip(x[key][1], [0])
        x[key][2] = 0
    with torch.no_grad():
        f = output_tensor(call_model(c.model, x))
    assert torch.isfinite(f).all()
    assert torch.isfinite(influence.exact(c.model, c.loss_fn, (x, y), c.ref, lr=LR).scores).all()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_gradient_checkpointing_changes_no_score(family):
    """transformers' gradient checkpointing (use_reentrant=False: each block's forward re-runs inside the
    backward) in train mode: Ghost (natively, second call included) and Exact still equal the per-sample
    reference."""
    c = zoo.case(family)
    c.model.gradient_checkpointing_enable()
    c.model.train()  # the configs have no dropout; transformers checkpoints only in train mode
    want = reference_scores(c.model, c.loss_fn, c.train, c.ref, LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", influence.VmapFallbackWarning)
        warnings.simplefilter("error", influence.RoutedToExactWarning)
        for _ in range(2):
            gh = influence.ghost(c.model, c.loss_fn, c.train, c.ref, LR, fallback="error")
            assert rel_err(gh.scores, want) < TOL
        assert rel_err(influence.exact(c.model, c.loss_fn, c.train, c.ref, LR).scores, want) < TOL
