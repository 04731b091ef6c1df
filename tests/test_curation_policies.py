"""Selection policies: thresholds, top/bottom k, random, GREATS against an explicit greedy computation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from influence.curation import (
    Method,
    choose,
    get_method,
    greats_select,
    keep_bottom_k,
    keep_count,
    keep_random,
    keep_threshold,
    keep_top_k,
)
from influence.curation.errors import EmptySelectionError


def test_threshold_keeps_scores_at_or_above():
    s = torch.tensor([-1.0, 0.0, 2.0, -0.5, 0.3])
    assert keep_threshold(s).tolist() == [False, True, True, False, True]
    assert keep_threshold(s, 0.5).tolist() == [False, False, True, False, False]


def test_top_and_bottom_k_with_ties_to_lower_index():
    s = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0])
    assert keep_top_k(s, 2).tolist() == [False, True, True, False, False]
    assert keep_top_k(s, 1).tolist() == [False, True, False, False, False]
    assert keep_bottom_k(s, 2).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError):
        keep_top_k(s, 6)


def test_keep_count_and_random_are_reproducible():
    assert keep_count(10, 0.25) == 3 and keep_count(10, 1.0) == 10 and keep_count(3, 0.01) == 1
    with pytest.raises(ValueError):
        keep_count(10, 0.0)
    a = keep_random(50, 17, torch.Generator().manual_seed(3))
    b = keep_random(50, 17, torch.Generator().manual_seed(3))
    assert int(a.sum()) == 17 and torch.equal(a, b)


def _greedy_explicit(grads: torch.Tensor, ref: torch.Tensor, lr: float, k: int) -> list[int]:
    """GREATS from explicit gradient vectors: pick argmax_j lr * g_j . (ref - lr * sum_{picked} g_p)."""
    picked: list[int] = []
    for _ in range(k):
        direction = ref - lr * grads[picked].sum(0)
        util = lr * grads @ direction
        util[picked] = -float("inf")
        picked.append(int(torch.argmax(util)))
    return picked


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 6), seed=st.integers(0, 10_000), lr=st.floats(0.01, 2.0))
def test_greats_equals_explicit_greedy(n, d, seed, lr):
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, d, generator=gen, dtype=torch.float64)
    ref = torch.randn(d, generator=gen, dtype=torch.float64)
    k = 1 + seed % n
    scores, pairwise = lr * grads @ ref, lr * grads @ grads.T
    mask = greats_select(scores, pairwise, k, lr)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[_greedy_explicit(grads, ref, lr, k)] = True
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == k


def test_greats_avoids_redundant_duplicates():
    # two identical strong samples and one weaker orthogonal one: with a large step the second copy
    # overshoots, so GREATS takes the orthogonal sample; plain top-2 takes both copies.
    grads = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.6]], dtype=torch.float64)
    ref, lr = torch.tensor([1.0, 1.0], dtype=torch.float64), 1.0
    scores, pairwise = lr * grads @ ref, lr * grads @ grads.T
    assert keep_top_k(scores, 2).tolist() == [True, True, False]
    assert greats_select(scores, pairwise, 2, lr).tolist() == [True, False, True]


def test_choose_fallbacks_for_an_empty_selection():
    values = torch.tensor([-3.0, -1.0, -2.0])
    m = get_method("lai")
    with pytest.raises(EmptySelectionError, match="on_empty"):
        choose(m, values, 3, 0.1, None, None, "error")
    mask, fb = choose(m, values, 3, 0.1, None, None, "keep_all")
    assert mask.all() and fb == "keep_all"
    mask, fb = choose(m, values, 3, 0.1, None, None, "best")
    assert mask.tolist() == [False, True, False] and fb == "best"


def test_method_validation():
    with pytest.raises(ValueError):
        Method("bad", "loss", "threshold")
    with pytest.raises(ValueError):
        get_method("nope")
    assert get_method("random", 0.5).keep_fraction == 0.5


def test_rank_sum_is_the_sum_of_the_two_ranks_and_keeps_useful_well_fitted_samples():
    from influence.curation.policies import rank_sum

    scores = torch.tensor([0.3, -1.0, 2.0, 0.1])  # ranks (0 = lowest): 2, 0, 3, 1
    losses = torch.tensor([0.5, 3.0, 0.2, 0.1])  # ranks of -loss: 1, 0, 2, 3
    assert rank_sum(scores, losses).tolist() == [3.0, 0.0, 5.0, 4.0]
    m = get_method("loss+lai-last", 0.5)
    assert m.policy == "rank_sum" and m.match == "lai-last"
    mask, _ = choose(m, rank_sum(scores, losses), 4, 0.1, None, None, "error")
    assert mask.tolist() == [False, False, True, True]  # not the top-2 of the score alone ([0, 2])
    with pytest.raises(ValueError, match="same shape"):
        rank_sum(scores, losses[:3])


def test_rate_matched_names_parse_to_their_base_method():
    m = get_method("random-as-exact-top2", 0.4)
    assert (m.name, m.policy, m.match, m.keep_fraction) == ("random-as-exact-top2", "random", "exact-top2", 0.4)
    assert get_method("random").match is None
