"""Curated training with 2 processes (torchrun, Gloo on CPU) reaches the same selections and parameters as
one process on the same global batches, for every method (float64)."""

import os
import signal
import subprocess
import sys

import torch

from validation.curation.ddp_check import DEFAULT_METHODS, make_problem, run_curated


def test_two_process_ddp_equals_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "validation.curation.ddp_check", "--out", str(out)]
    # own session, so a hang kills torchrun and both workers (and nothing else)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]
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
