"""``lai bench`` on tiny workloads: it runs, checks targets, writes its results atomically and keeps stderr clean."""

import json
import os
import subprocess
import sys

import pytest

from validation.bench import command as bench
from validation.bench import workloads as bench_workloads
from validation.settings import estimators as chosen

ARGS = ["--workload", "mlp", "--tiny", "--repeats", "1", "--sizes", "default", "--big", "--tasks", "none"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    return out, bench.run([*ARGS, "--out", str(out), "--no-progress"])


def test_bench_main_tiny_writes_json_and_text(tiny_run):
    out, report = tiny_run
    data = json.loads((out / "bench.json").read_text())
    assert data["workloads"].keys() == report["workloads"].keys() == {"mlp"}
    sec = data["workloads"]["mlp"]
    names = [r["estimator"] for r in sec["costs"]["rows"]]
    assert names[:3] == ["forward", "forward_backward", "train_step"]
    assert {"exact", "ghost", "lai", "lai-last", "tracin-last", "curated-lai", "curated-ghost"} <= set(names)
    fwd = sec["costs"]["rows"][0]["median_s"]
    for r in sec["costs"]["rows"]:
        assert r["median_s"] > 0
        assert r["ratio_to_forward"] == pytest.approx(r["median_s"] / fwd)
    assert len(sec["scaling"]["sizes"]) >= 4
    assert set(sec["scaling"]["exponent"]) == {"ghost", "lai", "exact", "lai-floor", "lai-last-floor"}
    assert len(sec["scaling"]["median_s"]["lai-floor"]) == len(sec["scaling"]["sizes"])
    assert {r["estimator"] for r in sec["big"]["rows"]} == set(chosen.timed())
    targets = {t["target"]: t for t in sec["targets"]}
    assert "lai time / forward(train+ref)" in targets and "exact time / ghost time" in targets
    assert not any("floor scaling" in t for t in targets)  # the floor is a reference, not a target
    assert {"lai-floor", "lai-last-floor"} <= set(names)  # the MLP has a floor: plain torch ops, same scores
    assert targets["lai time / forward(train+ref)"]["floor"] == next(
        r["ratio_to_forward"] for r in sec["costs"]["rows"] if r["estimator"] == "lai-floor")
    text = (out / "bench.txt").read_text()
    assert "mlp" in text and "targets" in text and "threads" in text
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary left behind
    assert data["environment"]["torch"] and data["environment"]["threads"] >= 1


def test_bench_resume_keeps_finished_sections(tiny_run):
    out, _ = tiny_run
    first = json.loads((out / "bench.json").read_text())["workloads"]["mlp"]
    assert bench.main([*ARGS, "--out", str(out), "--resume", "--quiet"]) == 0
    again = json.loads((out / "bench.json").read_text())["workloads"]["mlp"]
    for key in ("costs", "scaling", "big"):
        assert again[key] == first[key]


def test_bench_tiny_transformer_and_cnn_run(tmp_path):
    report = bench.run(["--workload", "all", "--tiny", "--repeats", "1", "--no-curated", "--estimators",
                         "ghost,lai", "--tasks", "none", "--out", str(tmp_path)])
    assert "tasks" not in report
    assert set(report["workloads"]) == {"mlp", "transformer", "cnn", "cnn1d"}
    for sec in report["workloads"].values():
        rows = [r["estimator"] for r in sec["costs"]["rows"]]
        assert [r for r in rows if not r.endswith("-floor")][3:] == ["ghost", "lai"]


def test_fit_exponent_recovers_a_power_law():
    sizes = [100, 200, 400, 800]
    assert bench.fit_exponent(sizes, [3e-6 * n ** 1.3 for n in sizes]) == pytest.approx(1.3)
    with pytest.raises(ValueError):
        bench.fit_exponent([10], [1.0])


def test_check_targets_flags_met_and_missed():
    rows = [{"estimator": "forward", "median_s": 1.0, "ratio_to_forward": 1.0},
            {"estimator": "lai", "median_s": 2.0, "ratio_to_forward": 2.0, "peak_ratio_to_ghost": 0.4},
            {"estimator": "ghost", "median_s": 1.0, "ratio_to_forward_backward": 1.2},
            {"estimator": "lai-last", "median_s": 1.2, "ratio_to_forward": 1.2},
            {"estimator": "exact", "median_s": 30.0}]
    got = {t["target"]: t["met"] for t in bench.check_targets("mlp", {"costs": {"rows": rows}})}
    assert got["lai-last time / forward(train+ref)"] is False  # the bound is 1.1
    assert got["lai time / forward(train+ref)"] is False
    assert got["lai peak / ghost peak"] is True
    assert got["ghost time / forward+backward(train+ref)"] is True
    assert got["exact time / ghost time"] is True


def test_bench_keeps_stderr_clean_and_rejects_bad_usage(tmp_path):
    """No profiler trace lines or allocator notices on stderr (the memory measurement filters exactly those),
    and usage errors exit with status 2."""
    cmd = [sys.executable, "-m", "lai", "bench", "--workload", "mlp", "--tiny", "--repeats", "1",
           "--estimators", "ghost,lai-last", "--no-progress", "--out", str(tmp_path / "b")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "curated-lai" in proc.stdout and "lai-last" in proc.stdout
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    for task in ("mnist1d-noisy40", "digits-noisy40"):  # curated step vs vanilla on the curation tasks
        rows = {r["method"]: r for r in report["tasks"][task]["rows"]}
        from validation.bench.tasks import methods  # every registered estimator that keeps a session
        assert {"lai", "lai-last", "ghost"} <= set(methods())
        assert set(rows) == {"vanilla", *(f"{m}@{k}" for k in (1, 8) for m in methods())}
        assert rows["vanilla"]["time_vs_vanilla"] == 1.0 and all(r["step_ms"] > 0 for r in rows.values())
        assert f"curated ghost step (statistics kept 8 steps) / vanilla step, {task}" in proc.stdout
    over = report["overhead"]
    assert over["overhead_ms"]["ghost"] == pytest.approx(over["ms"]["ghost score"] - over["ms"]["forward+backward"])
    assert over["ms"]["lai score"] > 0 and "ghost score overhead" in proc.stdout
    for bad in (["--estimators", "lai_last"], ["--workload", "gpt"], ["--repeats", "0"]):
        proc = subprocess.run([*cmd[:4], *bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "error" in proc.stderr


def test_workload_calls_go_through_the_registry():
    w = bench_workloads.build_workload("mlp", tiny=True)
    import torch
    gen = torch.Generator().manual_seed(0)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    whole = bench_workloads.estimator_call(w, "ghost", train, ref)()
    chunked = bench_workloads.estimator_call(w, "ghost", train, ref, chunk=4)()
    assert torch.allclose(whole, chunked, rtol=1e-4, atol=1e-7)
    with pytest.raises(KeyError, match="spelled 'tracin-last'"):
        bench_workloads.estimator_call(w, "tracin_last", train, ref)


def test_check_targets_by_cpu_clock_reads_cpu_ratios():
    rows = [{"estimator": "lai", "ratio_to_forward": 9.0, "cpu_ratio_to_forward": 1.2, "peak_ratio_to_ghost": None}]
    got = bench.check_targets("cnn", {"costs": {"rows": rows}}, clock="cpu")
    assert got[0]["met"] is True and got[0]["clock"] == "cpu"
    assert bench.check_targets("cnn", {"costs": {"rows": rows}})[0]["met"] is False
    with pytest.raises(ValueError):
        bench.check_targets("cnn", {}, clock="sundial")
