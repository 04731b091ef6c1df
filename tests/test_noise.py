import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.data.noise import class_dependent_label_noise, corrupt_documents, symmetric_label_noise

labels = st.integers(2, 12).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(st.integers(0, k - 1), min_size=0, max_size=300)))


@settings(max_examples=60, deadline=None)
@given(kl=labels, rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_symmetric_exact_rate_and_mask(kl, rate, seed):
    k, y = kl
    r = symmetric_label_noise(y, rate, k, seed)
    y = torch.tensor(y, dtype=torch.int64)
    assert r.y_noisy.dtype == torch.int64 and r.is_noisy.dtype == torch.bool
    assert torch.equal(r.y_clean, y)
    assert int(r.is_noisy.sum()) == round(rate * len(y))
    assert torch.equal(r.is_noisy, r.y_noisy != y)  # every flipped label differs from the clean one
    assert ((r.y_noisy >= 0) & (r.y_noisy < k)).all()
    assert torch.allclose(r.transition.sum(1), torch.ones(k, dtype=torch.float64))
    r2 = symmetric_label_noise(y, rate, k, seed)
    assert torch.equal(r.y_noisy, r2.y_noisy)


def test_symmetric_uniform_over_other_classes():
    y = torch.zeros(20000, dtype=torch.int64)
    r = symmetric_label_noise(y, 1.0, 5, seed=0)
    counts = torch.bincount(r.y_noisy, minlength=5)
    assert counts[0] == 0
    assert (counts[1:] - 5000).abs().max() < 300


def test_symmetric_seed_and_input_types():
    y = np.random.default_rng(0).integers(0, 10, 500)
    a = symmetric_label_noise(y, 0.3, 10, seed=1)
    b = symmetric_label_noise(torch.from_numpy(y), 0.3, 10, seed=1)
    c = symmetric_label_noise(y.tolist(), 0.3, 10, seed=2)
    assert torch.equal(a.y_noisy, b.y_noisy)
    assert not torch.equal(a.is_noisy, c.is_noisy)
    assert a.noise_rate == 0.3 and a.kind == "symmetric"
    with pytest.raises(ValueError):
        symmetric_label_noise(y, 1.5, 10, 0)
    with pytest.raises(ValueError):
        symmetric_label_noise(y, 0.1, 5, 0)  # labels beyond num_classes


def test_to_dict_json():
    r = symmetric_label_noise([0, 1, 2, 3], 0.5, 4, seed=0)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["y_noisy"] == r.y_noisy.tolist() and d["seed"] == 0 and d["kind"] == "symmetric"
    assert d["noisy_indices"] == r.is_noisy.nonzero().flatten().tolist() and len(d["noisy_indices"]) == 2
    json.dumps(class_dependent_label_noise([0, 1], 0.5, 2, seed=0).to_dict())


@settings(max_examples=40, deadline=None)
@given(kl=labels, rate=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_class_dependent_pair_flip(kl, rate, seed):
    k, y = kl
    r = class_dependent_label_noise(y, rate, k, seed)
    y = torch.tensor(y, dtype=torch.int64)
    assert torch.equal(r.is_noisy, r.y_noisy != y)
    assert torch.equal(r.y_noisy[r.is_noisy], (y[r.is_noisy] + 1) % k)
    assert torch.allclose(r.transition.sum(1), torch.ones(k, dtype=torch.float64))
    assert torch.equal(r.y_noisy, class_dependent_label_noise(y, rate, k, seed).y_noisy)


def test_class_dependent_rate_and_mapping():
    y = torch.arange(10).repeat(2000)
    r = class_dependent_label_noise(y, 0.4, 10, seed=3)
    assert abs(r.noise_rate - 0.4) < 0.02
    assert r.transition[2, 3] == pytest.approx(0.4) and r.transition[2, 2] == pytest.approx(0.6)
    m = class_dependent_label_noise(y, 1.0, 10, seed=0, mapping={3: 5, 7: 1})
    assert torch.equal(m.y_noisy[y == 3], torch.full((2000,), 5)) and torch.equal(m.y_noisy[y == 7],
                                                                                   torch.full((2000,), 1))
    assert not m.is_noisy[(y != 3) & (y != 7)].any()
    assert m.transition[0, 0] == 1.0 and m.transition[3, 5] == 1.0
    with pytest.raises(ValueError):
        class_dependent_label_noise(y, 0.1, 10, 0, mapping=[0] * 9)


@pytest.mark.parametrize("mode", ["shuffle", "shuffle_chars", "random_bytes"])
def test_corrupt_documents(mode):
    texts = [f"document number {i} has some words in it é" for i in range(20)]
    r = corrupt_documents(texts, 0.25, seed=0, mode=mode)
    assert int(r.is_noisy.sum()) == 5 and len(r.texts) == 20
    assert [a != b for a, b in zip(texts, r.texts)] == r.is_noisy.tolist()
    if mode == "shuffle":
        for i in r.is_noisy.nonzero().flatten().tolist():
            assert sorted(r.texts[i].split()) == sorted(texts[i].split())
    if mode == "shuffle_chars":
        for i in r.is_noisy.nonzero().flatten().tolist():
            assert sorted(r.texts[i]) == sorted(texts[i])
    if mode == "random_bytes":
        for i in r.is_noisy.nonzero().flatten().tolist():
            assert r.texts[i].isascii() and len(r.texts[i]) == len(texts[i].encode())
    again = corrupt_documents(texts, 0.25, seed=0, mode=mode)
    assert again.texts == r.texts and torch.equal(again.is_noisy, r.is_noisy)
    assert json.loads(json.dumps(r.to_dict()))["noisy_indices"] == r.is_noisy.nonzero().flatten().tolist()


def test_corrupt_documents_named_and_degenerate():
    docs = [("a", "one two three four"), ("b", ""), ("c", "x y z w v")]
    r = corrupt_documents(docs, 1.0, seed=0, mode="shuffle")
    assert [n for n, _ in r.texts] == ["a", "b", "c"]
    assert r.is_noisy.tolist() == [True, False, True]  # the empty document cannot change
    assert r.texts[1] == ("b", "")
    with pytest.raises(ValueError):
        corrupt_documents(docs, 0.5, 0, mode="nope")
