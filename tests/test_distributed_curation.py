"""Curated training with 2 processes (torchrun, Gloo on CPU) reaches the same selections and parameters as
one process on the same global batches, for every method (float64)."""

import torch
from conftest import run_torchrun

from validation.curation.ddp_check import DEFAULT_METHODS, make_problem, run_curated


def test_two_process_ddp_equals_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    run_torchrun(["-m", "validation.curation.ddp_check", "--out", str(out)], timeout=120)
    got = torch.load(out, weights_only=True)
    assert set(got) == set(DEFAULT_METHODS)
    for spec in DEFAULT_METHODS:
        model, batches, ref = make_problem()
        single = run_curated(model, batches, ref, spec)
        for step, (a, b) in enumerate(zip(got[spec]["masks"], single["masks"])):
            assert torch.equal(a, b), (spec, step, a, b)
        for k, v in single["params"].items():
            assert torch.allclose(got[spec]["params"][k], v, rtol=1e-12, atol=1e-14), (spec, k)
        initial = make_problem()[0].state_dict()
        assert any(not torch.equal(initial[k], v) for k, v in single["params"].items()), spec  # it trained
