"""Results people expect: proponents/opponents with their scores (batch results and whole data sets), the
per-reference score matrix of a data set on request (float64, equal to one pairwise call), a resumed scoring run
that says what it read back, progress counted in samples."""

import functools

import pytest
import torch
from torch import nn

import influence
from influence.dataset import score_dataset


def problem(n=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    ref = (torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
    return model, (x, y), ref


def test_batch_result_ranks_with_scores():
    model, data, ref = problem()
    r = influence.ghost(model, influence.cross_entropy, data, ref, lr=0.1, pairwise=True)
    idx, scores = r.proponents(3)
    assert torch.equal(scores, r.scores[idx]) and torch.equal(idx, r.scores.argsort(descending=True)[:3])
    worst = r.opponents(2)
    assert torch.equal(worst.indices, r.scores.argsort()[:2]) and worst.scores[0] == r.scores.min()
    v = 2  # against one reference sample: the column of the pairwise matrix
    assert torch.equal(r.proponents(3, reference=v).indices, r.pairwise[:, v].argsort(descending=True)[:3])
    with pytest.raises(ValueError, match="pairwise=True"):
        influence.ghost(model, influence.cross_entropy, data, ref, lr=0.1).proponents(3, reference=0)


def test_dataset_pairwise_matrix_equals_one_call_and_ranks_per_reference():
    model, data, ref = problem()
    full = influence.exact(model, influence.cross_entropy, data, ref, lr=0.1, pairwise=True)
    session = influence.Session(model, influence.cross_entropy, ref, estimator="ghost", lr=0.1, pairwise=True)
    ds = score_dataset(session, data, batch_size=5, pairwise=True, progress=False)
    assert ds.pairwise.shape == (19, 4)
    torch.testing.assert_close(ds.pairwise, full.pairwise, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(ds.scores, ds.pairwise.mean(1), rtol=1e-12, atol=1e-15)
    idx, scores = ds.opponents(4, reference=1)
    assert torch.equal(idx, full.pairwise[:, 1].argsort()[:4]) and torch.equal(scores, ds.pairwise[idx, 1])
    plain = functools.partial(influence.ghost, model, influence.cross_entropy, ref=ref, lr=0.1)
    with pytest.raises(influence.InfluenceError, match="per-reference matrix"):
        score_dataset(plain, data, batch_size=5, pairwise=True, progress=False)


def test_resume_says_what_it_read_back(tmp_path, capsys):
    model, data, ref = problem()
    scorer = functools.partial(influence.ghost, model, influence.cross_entropy, ref=ref, lr=0.1)
    first = score_dataset(scorer, data, batch_size=5, out=tmp_path, progress=True)
    assert first.reused == 0 and "resuming" not in capsys.readouterr().err
    (tmp_path / "part-000000000010.pt").unlink()  # as if killed before the third batch was written
    again = score_dataset(scorer, data, batch_size=5, out=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "3 of 4 batches (14 samples) read back" in err and again.reused == 14  # 5 + 5 + 4: the last has 4
    torch.testing.assert_close(again.scores, first.scores, rtol=0, atol=0)
    assert "sample/s" in err  # the progress bar's rate (tqdm), in samples
