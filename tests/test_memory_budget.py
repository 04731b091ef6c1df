"""Memory is a contract: a model with GPT-2's 50,257-token vocabulary runs every estimator within memory_budget, or
the estimator refuses by name (``influence.MemoryBudgetError``) before allocating; chunking never changes a score."""

import warnings

import pytest
import torch

import influence
from influence import hf
from influence.memory import free_bytes, resolve_budget
from validation.bench.measure import cpu_peak_bytes

transformers = pytest.importorskip("transformers")

VOCAB = 50257
GB = 1 << 30


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=32, n_head=2, n_positions=32,
                                  attn_implementation="eager")
    model = hf.prepare(transformers.GPT2LMHeadModel(cfg)).eval()
    gen = torch.Generator().manual_seed(1)

    def batch(n):
        return hf.lm_batch(torch.randint(0, VOCAB, (n, 16), generator=gen))
    return model, hf.causal_lm_loss(), batch(3), batch(3)


def _checkpoints(model):
    return [({k: v.clone() for k, v in model.state_dict().items()}, 1e-3)]


CALLS = {
    "ghost": lambda m, l, tr, rf, b: influence.ghost(m, l, tr, rf, 1e-3, memory_budget=b),
    "lai": lambda m, l, tr, rf, b: influence.lai(m, l, tr, rf, 1e-3, memory_budget=b),
    "lai-aligned": lambda m, l, tr, rf, b: influence.lai(m, l, tr, rf, 1e-3, token_pairing="aligned",
                                                         memory_budget=b),
    "lai-last": lambda m, l, tr, rf, b: influence.lai(m, l, tr, rf, 1e-3, layers="last", memory_budget=b),
    "exact": lambda m, l, tr, rf, b: influence.exact(m, l, tr, rf, 1e-3, memory_budget=b),
    "tracin-last": lambda m, l, tr, rf, b: influence.tracin(m, l, tr, rf, _checkpoints(m), last_layer=True,
                                                            memory_budget=b),
    "lai-pairwise": lambda m, l, tr, rf, b: influence.lai(m, l, tr, rf, 1e-3, pairwise=True, memory_budget=b),
}


REFUSED = ("exact", "tracin-last")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_vocabulary_sized_model_within_4_gb_and_refused_by_name_below(lm, name):
    model, loss_fn, train, ref = lm
    call = CALLS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = call(model, loss_fn, train, ref, 4 * GB)
        peak = cpu_peak_bytes(lambda: call(model, loss_fn, train, ref, 4 * GB))
        assert peak <= 4 * GB, f"{name}: peak {peak / 2**20:.0f} MiB over the 4 GB budget"
        out = full.pairwise if full.pairwise is not None else full.scores
        assert torch.isfinite(out).all()
        # a budget far below one vocabulary-sized matrix ([50257, 32] floats = 6.1 MiB): chunked to the same numbers,
        # or refused by name (Exact needs one sample's whole gradient, 6.6 MiB)
        if name in REFUSED:  # per-sample gradients of the tied [50257, 32] weight alone are 6.1 MiB
            with pytest.raises(influence.MemoryBudgetError, match="memory_budget"):
                call(model, loss_fn, train, ref, 4 << 20)
            return
        tight = call(model, loss_fn, train, ref, 4 << 20)
        got = tight.pairwise if tight.pairwise is not None else tight.scores
        assert torch.allclose(got, out, rtol=1e-4, atol=1e-12)


def test_exact_chunks_per_sample_gradients_to_the_budget(lm):
    """Exact's chunk of per-sample gradients shrinks to what the budget holds; one sample's gradient over it is
    refused before anything is allocated."""
    model, loss_fn, train, ref = lm
    sample = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    s = influence.Session(model, loss_fn, ref, estimator="exact", lr=1e-3, memory_budget=2 * sample + 1)
    assert s.backend.chunk == 2
    with pytest.raises(influence.MemoryBudgetError, match="one sample's gradient"):
        influence.Session(model, loss_fn, ref, estimator="exact", lr=1e-3, memory_budget=sample - 1)


def test_default_budget_is_half_the_free_memory():
    budget = resolve_budget(None)
    assert 0 < budget <= free_bytes()
    with pytest.raises(influence.MemoryBudgetError, match="positive"):
        resolve_budget(0)


def test_lai_embedding_term_is_an_index_lookup(lm):
    """LAI's embedding term in contracted form keeps one reference row per id the reference holds (RowSparse), never
    the dense [50257, 50257] matrix (10 GB): same scores as the Gram form, and the profiled peak far below one
    vocabulary-squared matrix."""
    model, loss_fn, train, ref = lm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gram = influence.lai(model, loss_fn, train, ref, 1e-3, mode="gram").per_layer
        contracted = influence.lai(model, loss_fn, train, ref, 1e-3, mode="materialize").per_layer
        peak = cpu_peak_bytes(lambda: influence.lai(model, loss_fn, train, ref, 1e-3, mode="materialize"))
    assert set(gram) == set(contracted) and "transformer.wte" in gram
    for name in gram:
        assert torch.allclose(contracted[name], gram[name], rtol=1e-4, atol=1e-10), name
    assert peak < VOCAB * VOCAB * 4 / 20


@pytest.mark.parametrize("budget_mib", [8, 64])
def test_reference_matrices_fit_the_budget_together(lm, budget_mib):
    """The budget bounds the reference matrices of all blocks together, not each one: later blocks take the Gram
    form once the earlier ones' matrices have used it up; scores equal the all-Gram scores."""
    model, loss_fn, train, ref = lm
    budget = budget_mib << 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = influence.Session(model, loss_fn, ref, estimator="lai", lr=1e-3, memory_budget=budget, mode="auto",
                              n_train=64)
        got = s.score(train).per_layer
        want = influence.lai(model, loss_fn, train, ref, 1e-3, mode="gram").per_layer
    side = s.backend.side
    assert side.kept <= budget and set(side.modes.values()) <= {"gram", "materialize"}
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-10), name
