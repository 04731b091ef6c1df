"""Hugging Face models (GPT-2, GPT-Neo, BERT classifier): Ghost == Exact, LAI(last) == Exact(head), float64.

Tiny random configs (nothing is downloaded), padding on either side with attention masks, reference
batches of several samples. Skipped without the ``hf`` extra.
"""

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip(
    "transformers", reason='Hugging Face tests need the optional extra: pip install -e ".[hf]"')

from conftest import rel_err  # noqa: E402
from reference import reference_scores  # noqa: E402

import influence  # noqa: E402
import influence.hf as H  # noqa: E402
from influence.batch import call_model, output_tensor, take  # noqa: E402
from influence.layers import HFConv1D  # noqa: E402

TOL = 1e-8
V, T, N_TRAIN, N_REF, N_LABELS = 48, 10, 4, 3, 3
FAMILIES = ["gpt2", "gpt_neo", "bert"]
CAUSAL = ["gpt2", "gpt_neo"]
# causal LMs: left padding with and without position ids counted from the mask
PADDINGS = {"gpt2": ["right", "left", "left_pos"], "gpt_neo": ["right", "left", "left_pos"], "bert": ["right", "left"]}
CASES = [(f, p) for f in FAMILIES for p in PADDINGS[f]]
BUILDERS = {"gpt2": H.tiny_gpt2, "gpt_neo": H.tiny_gpt_neo, "bert": H.tiny_bert_classifier}
PAD_ID = 0


def token_batch(padding: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N_TRAIN + N_REF sequences of random lengths (one full, one of 3 tokens), padded to T."""
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_REF
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    lengths[0], lengths[1], lengths[N_TRAIN] = T, 3, 5
    seqs = [torch.randint(1, V, (int(k),), generator=g) for k in lengths]
    return H.pad(seqs, PAD_ID, "right" if padding == "right" else "left", length=T)


def make_case(family: str, padding: str, seed: int = 0, ids=None):
    """(model, loss_fn, train, ref) with the train/ref split of one padded batch."""
    model = BUILDERS[family](vocab_size=V, seed=seed, dtype=torch.float64)
    input_ids, mask = token_batch(padding, seed) if ids is None else ids
    if family == "bert":
        labels = torch.randint(0, N_LABELS, (len(input_ids),), generator=torch.Generator().manual_seed(seed + 1))
        batch, loss_fn = ({"input_ids": input_ids, "attention_mask": mask}, labels), H.sequence_classification_loss()
    else:
        batch, loss_fn = H.lm_batch(input_ids, mask, position_ids=padding == "left_pos"), H.causal_lm_loss()
    return model, loss_fn, take(batch, slice(0, N_TRAIN)), take(batch, slice(N_TRAIN, None))


def head_name(family: str) -> str:
    return "classifier" if family == "bert" else "lm_head"


def untied(model: nn.Module, family: str) -> nn.Module:
    """A copy whose output layer owns its weight (same values): its gradient is the head's use only."""
    other = copy.deepcopy(model)
    if family != "bert":
        assert other.lm_head.weight is other.get_input_embeddings().weight  # the builders keep GPT's tying
        other.lm_head.weight = nn.Parameter(other.lm_head.weight.detach().clone())
    return other


def autograd_scores(model, loss_fn, train, ref, lr):
    """lr * <grad l_i, grad L_ref> with grad l_i from the batched forward (one autograd.grad per sample)."""
    return reference_scores(model, loss_fn, train, ref, lr)


# ------------------------------------------------------------------------ equalities


@pytest.mark.parametrize("family,padding", CASES)
def test_ghost_equals_exact(f64, family, padding):
    model, loss_fn, train, ref = make_case(family, padding)
    ex = influence.exact(model, loss_fn, train, ref, lr=0.1)
    gh = influence.ghost(model, loss_fn, train, ref, lr=0.1)
    assert rel_err(gh.scores, ex.scores) < TOL
    assert set(gh.per_layer) == set(ex.per_layer)
    for k in ex.per_layer:
        assert rel_err(gh.per_layer[k], ex.per_layer[k]) < TOL, k
    assert rel_err(gh.train_losses, ex.train_losses) < 1e-12


@pytest.mark.parametrize("family,padding", [("gpt2", "left"), ("gpt_neo", "right"), ("bert", "left")])
def test_exact_equals_per_sample_autograd_on_the_batched_forward(f64, family, padding):
    """Exact's vmap over batch-1 samples == gradients of each row of one batched forward (masks, position ids
    of batch 1 and padding couple no samples)."""
    model, loss_fn, train, ref = make_case(family, padding)
    ex = influence.exact(model, loss_fn, train, ref, lr=0.3)
    assert rel_err(ex.scores, autograd_scores(model, loss_fn, train, ref, 0.3)) < TOL


@pytest.mark.parametrize("family,padding", CASES)
def test_lai_last_equals_exact_on_the_head(f64, family, padding):
    """Tied GPT models: the head's use of the shared matrix is Exact on an untied copy's lm_head.weight."""
    model, loss_fn, train, ref = make_case(family, padding)
    copy_ = untied(model, family)
    head = head_name(family)
    names = [n for n, _ in copy_.named_parameters() if n.rpartition(".")[0] == head]
    ex = influence.exact(copy_, loss_fn, train, ref, lr=0.2, params=names)
    for m in (model, copy_):
        la = influence.lai(m, loss_fn, train, ref, lr=0.2, layers="last")
        assert list(la.per_layer) == [head]
        assert rel_err(la.scores, ex.scores) < TOL


def test_tied_embedding_cross_terms(f64):
    """GPT-2's tied wte/lm_head: Ghost's merged block == Exact, and differs from the sum of the two uses scored
    separately (the cross terms <wte use_i, head use_v> are not zero)."""
    model, loss_fn, train, ref = make_case("gpt2", "right")
    ex = influence.exact(model, loss_fn, train, ref, lr=1.0)
    gh = influence.ghost(model, loss_fn, train, ref, lr=1.0)
    key = "transformer.wte"
    assert rel_err(gh.per_layer[key], ex.per_layer[key]) < TOL
    sep = influence.exact(untied(model, "gpt2"), loss_fn, train, ref, lr=1.0)
    separate = sep.per_layer[key] + sep.per_layer["lm_head"]
    assert rel_err(separate, ex.per_layer[key]) > 1e-3


@pytest.mark.parametrize("mode", ["gram", "materialize"])
def test_ghost_pairwise_and_modes_gpt2(f64, mode):
    model, loss_fn, train, ref = make_case("gpt2", "left_pos")
    ex = influence.exact(model, loss_fn, train, ref, lr=0.5, pairwise=True)
    gh = influence.ghost(model, loss_fn, train, ref, lr=0.5, pairwise=True, mode=mode)
    assert gh.pairwise.shape == (N_TRAIN, N_REF)
    assert rel_err(gh.pairwise, ex.pairwise) < TOL
    for k in ex.per_layer_pairwise:
        assert rel_err(gh.per_layer_pairwise[k], ex.per_layer_pairwise[k]) < TOL, k


@pytest.mark.parametrize("family", CAUSAL)
def test_ghost_weighted_gradient(f64, family):
    """sum_i w_i grad l_i from Ghost's factors (Conv1D bias row, tied matrix) == autograd."""
    model, loss_fn, train, _ = make_case(family, "right")
    gh = influence.ghost(model, loss_fn, train, train, lr=1.0)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0])
    got = {id(p): g for p, g in gh.weighted_gradient(w)}
    losses = loss_fn(output_tensor(call_model(model, train[0])), train[1])
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad((w * losses).sum(), params)
    assert set(got) == {id(p) for p in params}
    for p, g in zip(params, want):
        assert got[id(p)].shape == p.shape
        assert rel_err(got[id(p)], g) < TOL


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and every buffer, including the non-persistent ones state_dict() leaves out (BERT's ids)."""
    return {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}


def test_tracin_on_hf_models(f64):
    """TracIn at one checkpoint == Exact; the last-layer variant on BERT == LAI(last)."""
    model, loss_fn, train, ref = make_case("gpt2", "right")
    ck = [(copy.deepcopy(model.state_dict()), 0.1)]
    assert rel_err(influence.tracin(model, loss_fn, train, ref, ck).scores,
                   influence.exact(model, loss_fn, train, ref, lr=0.1).scores) < TOL
    model, loss_fn, train, ref = make_case("bert", "left")
    last = influence.tracin(model, loss_fn, train, ref, [(full_state(model), 0.1)], last_layer=True)
    assert rel_err(last.scores, influence.lai(model, loss_fn, train, ref, lr=0.1, layers="last").scores) < TOL


def test_tracin_accepts_state_dict_of_bert(f64):
    model, loss_fn, train, ref = make_case("bert", "right")
    influence.tracin(model, loss_fn, train, ref, [(model.state_dict(), 0.1)])


# ------------------------------------------------------------------------ masks and losses


@pytest.mark.parametrize("family,padding", [("gpt2", "left"), ("gpt2", "left_pos"), ("gpt_neo", "right"),
                                            ("bert", "right")])
def test_masked_tokens_contribute_nothing(f64, family, padding):
    """Rewriting the ids under the attention mask changes no loss and no score of any estimator. (Not BERT
    with left padding: its pooler reads position 0, a pad token there.)"""
    input_ids, mask = token_batch(padding, 0)
    noise = torch.randint(1, V, input_ids.shape, generator=torch.Generator().manual_seed(7))
    scrambled = torch.where(mask.bool(), input_ids, noise)
    assert not torch.equal(scrambled, input_ids)
    estimators = {"exact": lambda *a: influence.exact(*a, lr=0.1), "ghost": lambda *a: influence.ghost(*a, lr=0.1),
                  "lai_last": lambda *a: influence.lai(*a, lr=0.1, layers="last")}
    if family in CAUSAL:  # per-token output: padded positions have g = 0, so LAI's all-pairs terms vanish too
        estimators["lai"] = lambda *a: influence.lai(*a, lr=0.1)
    for name, est in estimators.items():
        a = est(*make_case(family, padding, ids=(input_ids, mask)))
        b = est(*make_case(family, padding, ids=(scrambled, mask)))
        assert rel_err(b.train_losses, a.train_losses) < 1e-12, name
        assert rel_err(b.scores, a.scores) < 1e-10, name


@pytest.mark.parametrize("family", CAUSAL)
def test_causal_lm_loss_matches_transformers(f64, family):
    """Per-sample loss = transformers' own shifted, -100-ignoring loss of the sample alone (which it takes in
    float32: hence the tolerance; a wrong shift would differ by O(1))."""
    model, loss_fn, train, _ = make_case(family, "left")
    x, labels = train
    ours = loss_fn(output_tensor(call_model(model, x)), labels)
    for i in range(N_TRAIN):
        xi = take(x, slice(i, i + 1))
        theirs = model(**xi, labels=labels[i:i + 1]).loss
        assert abs(ours[i].item() - theirs.item()) < 1e-6 * max(1.0, theirs.item())


def test_lm_labels_and_position_ids():
    ids, mask = H.pad([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # left padding: the first real token is never a target (its predictor is a pad position)
    assert H.lm_labels(ids, mask).tolist() == [[5, 6, 7], [-100, -100, -100]]
    right, rmask = H.pad([[5, 6, 7], [8, 9]], pad_id=0)
    assert H.lm_labels(right, rmask).tolist() == [[5, 6, 7], [8, 9, -100]]
    assert H.position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    x, y = H.lm_batch(ids, mask, position_ids=True)
    assert set(x) == {"input_ids", "attention_mask", "position_ids"} and torch.equal(y, H.lm_labels(ids, mask))
    with pytest.raises(ValueError):
        H.pad([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError):
        H.pad([[1]], 0, side="middle")


def test_bert_padding_mask_equals_transformers(f64):
    """prepare()'s additive 4D mask gives the same logits as transformers' own bidirectional mask."""
    model, _, train, _ = make_case("bert", "left")
    plain = type(model)(model.config).eval()
    plain.load_state_dict(model.state_dict())
    plain.to(torch.float64)
    assert H.is_bidirectional(model) and not plain._forward_pre_hooks
    with torch.no_grad():
        assert rel_err(model(**train[0]).logits, plain(**train[0]).logits) < 1e-13
    from transformers.masking_utils import create_bidirectional_mask
    mask = train[0]["attention_mask"]
    emb = torch.zeros(*mask.shape, model.config.hidden_size)
    theirs = create_bidirectional_mask(config=model.config, inputs_embeds=emb, attention_mask=mask)
    assert torch.equal(H.additive_padding_mask(mask, torch.float64).expand_as(theirs), theirs)
    assert not H.is_bidirectional(H.tiny_gpt2())


# ------------------------------------------------------------------------ layers


def test_conv1d_is_recognised_without_importing_transformers_in_layers():
    from transformers.pytorch_utils import Conv1D

    class Sub(Conv1D):
        pass

    class Conv1DLookalike(nn.Module):
        pass

    Conv1DLookalike.__name__ = "Conv1D"
    assert isinstance(Conv1D(4, 3), HFConv1D) and isinstance(Sub(4, 3), HFConv1D)
    assert not isinstance(nn.Linear(3, 4), HFConv1D) and not isinstance(Conv1DLookalike(), HFConv1D)
    import influence.layers as layers
    assert "transformers" not in vars(layers)


def test_gpt2_layers_are_all_covered(f64):
    """Every trainable GPT-2 parameter is scored by the fast path; LAI sees the Conv1D layers."""
    model, loss_fn, train, ref = make_case("gpt2", "right")
    from influence.capture import plan
    pl = plan(model)
    assert not pl.unsupported
    convs = {n for n, m in model.named_modules() if isinstance(m, HFConv1D)}
    assert len(convs) == 4 * model.config.n_layer
    la = influence.lai(model, loss_fn, train, ref, lr=0.1)
    assert convs <= set(la.per_layer) and torch.isfinite(la.scores).all()


# ------------------------------------------------------------------------ examples


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timing_example_runs():
    times = _example("hf_timing").main(["--repeats", "1", "--batch", "4", "--ref", "3", "--seq-len", "8"])
    assert set(times) == {"training step", "exact", "ghost", "lai (all layers)", "lai (last layer)",
                          "tracin (1 checkpoint)"}
    assert all(t > 0 for t in times.values())


@pytest.mark.slow
def test_curated_finetune_example_runs():
    res = _example("hf_curated_finetune").main(["--steps", "3", "--warmup", "1", "--batch", "6", "--ref", "4",
                                                 "--max-len", "24", "--n-embd", "16"])
    assert set(res) == {"vanilla", "lai"}
    assert res["vanilla"]["kept_noisy"] == res["vanilla"]["kept_clean"] == 1.0
    for r in res.values():
        assert 0.0 <= r["kept_noisy"] <= 1.0 and 0.0 <= r["kept_clean"] <= 1.0
        assert torch.isfinite(torch.tensor(r["heldout_loss"]))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo"])
def test_tracin_last_layer_on_tied_head_is_gradient_of_shared_matrix(f64, family):
    model, loss_fn, train, ref = make_case(family, "right")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tr = influence.tracin(model, loss_fn, train, ref, [(state, 0.1)], last_layer=True)
    shared = [n for n, p in model.named_parameters() if p is model.lm_head.weight]
    ex = influence.exact(model, loss_fn, train, ref, lr=0.1, params=shared)
    assert torch.allclose(tr.scores, ex.scores, rtol=1e-10, atol=0)


def test_keep_float64_mode():
    """Under KeepFloat64 a float64 tensor is never cast down; other casts are untouched."""
    x = torch.randn(3, dtype=torch.float64)
    with H.KeepFloat64():
        assert x.to(torch.float32).dtype == torch.float64 and x.float().dtype == torch.float64
        assert x.to("cpu", torch.float16).dtype == torch.float64 and x.to(dtype=torch.bfloat16).dtype == torch.float64
        assert torch.softmax(x, -1, dtype=torch.float32).dtype == torch.float64
        assert torch.arange(3).float().dtype == torch.float32  # integer -> float32 is not a downcast
        assert torch.ones(2, dtype=torch.float32).double().dtype == torch.float64
    assert x.to(torch.float32).dtype == torch.float32  # outside the mode nothing changes


def test_prepared_float64_model_computes_in_float64(f64):
    """A prepared float64 model runs its forward under KeepFloat64 (entered and left by hooks, also when the
    forward raises); a float32 model is untouched."""
    model = H.tiny_gpt_neo(vocab_size=V, dtype=torch.float64)
    ids = torch.randint(1, V, (2, 5))
    seen = []
    attn = model.transformer.h[0].attn.attention
    handle = attn.register_forward_hook(lambda m, a, o: seen.append(torch._C._get_function_stack_at(0)
                                                                     if torch._C._len_torch_function_stack() else None))
    model(input_ids=ids)
    handle.remove()
    assert isinstance(seen[0], H.KeepFloat64)
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(Exception):
        model(input_ids=torch.full((2, 5), V + 5))  # an out-of-range id raises inside the forward
    assert torch._C._len_torch_function_stack() == 0
    m32 = H.tiny_gpt_neo(vocab_size=V, dtype=torch.float32)
    seen.clear()
    handle = m32.transformer.h[0].attn.attention.register_forward_hook(
        lambda m, a, o: seen.append(torch._C._len_torch_function_stack()))
    m32(input_ids=ids)
    handle.remove()
    assert seen == [0]
