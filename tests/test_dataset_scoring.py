"""Data-set scoring: equal to per-batch calls (float64), in sample order whatever the loader, resumable after a kill,
refuses to mix settings, recomputes corrupt parts, and sharded over 2 processes equals one process."""

import functools
import os
import textwrap

import pytest
import torch
from conftest import run_torchrun
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import influence
from influence.dataset import DatasetScores, ResumeMismatchError, fingerprint, score_dataset


def problem(n=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    ref = (torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
    return model, (x, y), ref


def scorer_for(model, ref, estimator=influence.ghost):
    return functools.partial(estimator, model, influence.cross_entropy, ref=ref, lr=0.1)


@pytest.mark.parametrize("estimator", [influence.ghost, influence.lai, influence.exact])
def test_equals_one_batch_call(estimator):
    model, data, ref = problem()
    full = estimator(model, influence.cross_entropy, data, ref, lr=0.1)
    ds = score_dataset(scorer_for(model, ref, estimator), data, batch_size=5, per_layer=True, progress=False)
    assert torch.equal(ds.indices, torch.arange(23))
    torch.testing.assert_close(ds.scores, full.scores, rtol=1e-10, atol=1e-14)
    for k, v in full.per_layer.items():
        torch.testing.assert_close(ds.per_layer[k], v, rtol=1e-10, atol=1e-14)


def test_dataset_and_shuffled_loader_keep_sample_order():
    model, data, ref = problem()
    want = score_dataset(scorer_for(model, ref), data, batch_size=4, progress=False).scores
    ds = TensorDataset(*data)
    got_ds = score_dataset(scorer_for(model, ref), ds, batch_size=4, progress=False)
    loader = DataLoader(ds, batch_size=6, shuffle=True)
    got_loader = score_dataset(scorer_for(model, ref), loader, progress=False)
    torch.testing.assert_close(got_ds.scores, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got_loader.scores, want, rtol=1e-10, atol=1e-14)


def test_proponents_and_opponents():
    model, data, ref = problem()
    ds = score_dataset(scorer_for(model, ref), data, batch_size=8, progress=False)
    order = ds.scores.argsort(descending=True)
    assert torch.equal(ds.proponents(3).indices, ds.indices[order[:3]])
    assert torch.equal(ds.opponents(3).indices, ds.indices[order.flip(0)[:3]])
    idx, scores = ds.proponents(1)
    assert ds.scores[idx] == ds.scores.max() == scores


class Killed(RuntimeError):
    pass


def test_resume_after_kill_scores_only_what_is_missing(tmp_path):
    model, data, ref = problem()
    inner = scorer_for(model, ref)
    calls = []

    def dying(batch):
        if len(calls) == 3:
            raise Killed
        calls.append(1)
        return inner(batch)

    dying.describe = lambda: "ghost-test"
    with pytest.raises(Killed):
        score_dataset(dying, data, batch_size=5, out=tmp_path, progress=False)
    assert len(list(tmp_path.glob("part-*.pt"))) == 3
    calls.clear()
    counting = lambda b: (calls.append(1), inner(b))[1]  # noqa: E731
    counting.describe = dying.describe
    done = score_dataset(counting, data, batch_size=5, out=tmp_path, progress=False)
    assert len(calls) == 2  # 23 samples in 5 batches, 3 already on disk
    torch.testing.assert_close(done.scores, inner(data).scores, rtol=1e-10, atol=1e-14)
    again = DatasetScores.load(tmp_path / "scores.pt")
    assert torch.equal(again.scores, done.scores)


def test_resume_refuses_other_settings_and_recomputes_corrupt_parts(tmp_path):
    model, data, ref = problem()
    sc = scorer_for(model, ref)
    first = score_dataset(sc, data, batch_size=5, out=tmp_path, fingerprint=fingerprint(model, ref), progress=False)
    with pytest.raises(ResumeMismatchError, match="batch_size"):
        score_dataset(sc, data, batch_size=4, out=tmp_path, fingerprint=fingerprint(model, ref), progress=False)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(ResumeMismatchError, match="fingerprint"):
        score_dataset(sc, data, batch_size=5, out=tmp_path, fingerprint=fingerprint(model, ref), progress=False)
    with torch.no_grad():
        model[0].weight.sub_(1.0)
    (tmp_path / "part-000000000005.pt").write_bytes(b"not a torch file")
    again = score_dataset(sc, data, batch_size=5, out=tmp_path, fingerprint=fingerprint(model, ref), progress=False)
    torch.testing.assert_close(again.scores, first.scores, rtol=1e-10, atol=1e-14)


def test_bad_arguments_are_named():
    model, data, ref = problem()
    with pytest.raises(influence.InfluenceError, match="batch_size"):
        score_dataset(scorer_for(model, ref), data, batch_size=0)
    with pytest.raises(influence.InfluenceError, match="map-style"):
        score_dataset(scorer_for(model, ref), DataLoader(_Stream(), batch_size=2))
    with pytest.raises(influence.InfluenceError, match="no sample"):
        score_dataset(scorer_for(model, ref), (data[0][:0], data[1][:0]))


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(5), 0


SHARDED = textwrap.dedent("""
    import functools, sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_dataset_scoring import problem, scorer_for
    from influence.dataset import score_dataset
    dist.init_process_group("gloo")
    model, data, ref = problem()
    ds = score_dataset(scorer_for(model, ref), data, batch_size=4, per_layer=True, progress=False)
    if dist.get_rank() == 0:
        torch.save({{"indices": ds.indices, "scores": ds.scores, "per_layer": ds.per_layer}}, {out!r})
    dist.destroy_process_group()
""")


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "sharded.pt"
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED.format(tests=os.path.dirname(__file__), out=str(out)))
    run_torchrun([str(script)], timeout=120)
    got = torch.load(out, weights_only=True)
    model, data, ref = problem()
    one = score_dataset(scorer_for(model, ref), data, batch_size=4, per_layer=True, progress=False)
    assert torch.equal(got["indices"], one.indices)
    torch.testing.assert_close(got["scores"], one.scores, rtol=0, atol=0)
    for k in one.per_layer:
        torch.testing.assert_close(got["per_layer"][k], one.per_layer[k], rtol=0, atol=0)
