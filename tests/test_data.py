import random

import numpy as np
import pytest
import torch

from validation.data import datasets as data
from validation.data.datasets import (
    ArrayDataset,
    TextDataset,
    decode,
    encode,
    get_dataset,
    lm_pairs,
    load_digits,
    load_mnist1d,
    load_pydoc_text,
    split_documents,
    tokenize_documents,
)


@pytest.fixture(scope="module")
def mnist1d_full() -> ArrayDataset:
    return load_mnist1d()


def test_mnist1d_published_shapes(mnist1d_full):
    d = mnist1d_full
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.unique().tolist()) == set(range(10))
    assert d.meta["num_classes"] == 10


def test_mnist1d_subsample_seeded(mnist1d_full):
    a, b, c = load_mnist1d(300, 100, seed=1), load_mnist1d(300, 100, seed=1), load_mnist1d(300, 100, seed=2)
    assert a.x_train.shape == (300, 40) and a.y_test.shape == (100,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # the subset consists of rows of the full set, labels kept with their inputs
    full = {tuple(r): y for r, y in zip(mnist1d_full.x_train.numpy().round(6).tolist(), mnist1d_full.y_train.tolist())}
    assert all(full[tuple(r)] == y for r, y in zip(a.x_train.numpy().round(6).tolist(), a.y_train.tolist()))
    with pytest.raises(ValueError):
        load_mnist1d(5000)


def test_mnist1d_restores_global_rng(monkeypatch):
    import mnist1d.data

    def fake_make_dataset(args):  # like the real one: reseeds the global RNGs
        random.seed(args.seed)
        np.random.seed(args.seed)
        z = np.zeros((2, 40))
        return {"x": z, "y": np.zeros(2), "x_test": z, "y_test": np.zeros(2)}

    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    assert data._generate_mnist1d.__wrapped__()["x"].dtype == np.float32
    assert (np.random.rand(), random.random()) == expected


def test_mnist1d_disk_cache(tmp_path, monkeypatch, mnist1d_full):
    monkeypatch.setenv("LAI_CACHE", str(tmp_path))
    d = load_mnist1d()
    f = tmp_path / data.MNIST1D_FILE
    assert f.exists() and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(d.x_train, mnist1d_full.x_train) and torch.equal(d.y_test, mnist1d_full.y_test)
    # a cached file is read back instead of regenerated
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y"][:] = 7
    (tmp_path / "other").mkdir()
    np.savez(tmp_path / "other" / data.MNIST1D_FILE, **arrays)
    assert (load_mnist1d(20, 5, cache_dir=tmp_path / "other").y_train == 7).all()
    assert (load_mnist1d(20, 5).y_train != 7).any()  # the in-process cache was not modified


def test_digits():
    d = load_digits(n_test=360, seed=0)
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0 <= d.x_train.min() and d.x_train.max() == 1.0
    # stratified: every class present in test in ~equal proportion
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    assert torch.equal(d.x_test, load_digits(360, seed=0).x_test)
    assert not torch.equal(d.y_test, load_digits(360, seed=1).y_test)


def test_encode_decode_roundtrip():
    s = "héllo → wörld\n"
    t = encode(s)
    assert t.dtype == torch.int64 and len(t) == len(s.encode()) and int(t.max()) < 256
    assert decode(t) == s


def test_lm_pairs_shifted():
    tokens = torch.arange(23)
    x, y = lm_pairs(tokens, 5)
    assert x.shape == y.shape == (4, 5) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x.flatten(), tokens[:20])
    x0, y0 = lm_pairs(torch.arange(5), 5)
    assert x0.shape == (0, 5) and y0.shape == (0, 5)


def test_tokenize_documents_never_spans():
    docs = [("a", "a" * 11), ("b", "bb"), ("c", "c" * 7)]
    x, y, doc = tokenize_documents(docs, 3)
    assert doc.tolist() == [0, 0, 0, 2, 2]
    for row, i in zip(x.tolist(), doc.tolist()):
        assert set(row) == {ord("abc"[i])}


@pytest.fixture(scope="module")
def pydoc() -> TextDataset:
    return load_pydoc_text(seq_len=32, seed=0, val_fraction=0.1)


def test_pydoc_shapes_and_shift(pydoc):
    d = pydoc
    assert d.x_train.shape[1] == 32 and d.x_train.dtype == torch.int64 and d.y_train.shape == d.x_train.shape
    assert d.meta["vocab_size"] == 256 and int(d.x_train.max()) < 256
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1]) and torch.equal(d.x_test[:, 1:], d.y_test[:, :-1])
    assert len(d.x_train) > 1000 and len(d.x_test) > 0
    assert len(d.doc_train) == len(d.x_train) and len(d.doc_test) == len(d.x_test)
    # each sequence is a verbatim slice of its source document; its last target continues it
    for j in (0, len(d.x_train) // 2, len(d.x_train) - 1):
        doc = d.docs_train[int(d.doc_train[j])][1].encode()
        assert bytes(d.x_train[j].tolist()) + bytes([int(d.y_train[j, -1])]) in doc


def test_pydoc_document_split(pydoc):
    names_tr = {n for n, _ in pydoc.docs_train}
    names_te = {n for n, _ in pydoc.docs_test}
    assert not names_tr & names_te
    from pydoc_data.topics import topics
    assert names_tr | names_te == set(topics)
    assert len(names_te) == round(0.1 * len(topics))
    again = load_pydoc_text(seq_len=32, seed=0)
    assert [n for n, _ in again.docs_test] == [n for n, _ in pydoc.docs_test]
    assert torch.equal(again.x_train, pydoc.x_train)
    other = load_pydoc_text(seq_len=32, seed=1)
    assert {n for n, _ in other.docs_test} != names_te


def test_split_documents_counts():
    docs = [(str(i), "x") for i in range(10)]
    tr, te = split_documents(docs, 0.3, seed=0)
    assert len(te) == 3 and len(tr) == 7 and set(tr).isdisjoint(te)
    assert split_documents(docs, 0.0, 0)[1] == []
    with pytest.raises(ValueError):
        split_documents(docs, 1.0, 0)


def test_registry():
    assert isinstance(get_dataset("digits", n_test=100), ArrayDataset)
    assert get_dataset("mnist1d", n_train=50, n_test=10).x_train.shape == (50, 40)
    assert get_dataset("pydoc", seq_len=16).x_train.shape[1] == 16
    with pytest.raises(KeyError, match="available"):
        get_dataset("imagenet")
