"""``python -m validation bench`` on tiny workloads: it runs, checks targets and writes its results atomically."""

import json
import os

import pytest

from validation import bench


ARGS = ["--workload", "mlp", "--tiny", "--repeats", "1", "--sizes", "default", "--big"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    return out, bench.main([*ARGS, "--out", str(out)])


def test_bench_main_tiny_writes_json_and_text(tiny_run):
    out, report = tiny_run
    data = json.loads((out / "bench.json").read_text())
    assert data["workloads"].keys() == report["workloads"].keys() == {"mlp"}
    sec = data["workloads"]["mlp"]
    names = [r["estimator"] for r in sec["costs"]["rows"]]
    assert names[:3] == ["forward", "forward_backward", "train_step"]
    assert {"exact", "ghost", "lai", "lai_last", "tracin_last", "curated_lai", "curated_ghost"} <= set(names)
    fwd = sec["costs"]["rows"][0]["median_s"]
    for r in sec["costs"]["rows"]:
        assert r["median_s"] > 0
        assert r["ratio_to_forward"] == pytest.approx(r["median_s"] / fwd)
    assert len(sec["scaling"]["sizes"]) >= 4 and set(sec["scaling"]["exponent"]) == {"ghost", "lai", "exact"}
    assert {r["estimator"] for r in sec["big"]["rows"]} == set(bench.ALL_ESTIMATORS)
    targets = {t["target"] for t in sec["targets"]}
    assert "lai time / forward(train+ref)" in targets and "exact time / ghost time" in targets
    text = (out / "bench.txt").read_text()
    assert "mlp" in text and "targets" in text and "threads" in text
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # no temporary left behind
    assert data["environment"]["torch"] and data["environment"]["threads"] >= 1


def test_bench_resume_keeps_finished_sections(tiny_run):
    out, _ = tiny_run
    first = json.loads((out / "bench.json").read_text())["workloads"]["mlp"]
    bench.main([*ARGS, "--out", str(out), "--resume"])
    again = json.loads((out / "bench.json").read_text())["workloads"]["mlp"]
    for key in ("costs", "scaling", "big"):
        assert again[key] == first[key]


def test_bench_tiny_transformer_and_cnn_run(tmp_path):
    report = bench.main(["--workload", "all", "--tiny", "--repeats", "1", "--no-curated", "--estimators",
                         "ghost,lai", "--out", str(tmp_path)])
    assert set(report["workloads"]) == {"mlp", "transformer", "cnn"}
    for sec in report["workloads"].values():
        assert [r["estimator"] for r in sec["costs"]["rows"]][3:] == ["ghost", "lai"]


def test_fit_exponent_recovers_a_power_law():
    sizes = [100, 200, 400, 800]
    assert bench.fit_exponent(sizes, [3e-6 * n ** 1.3 for n in sizes]) == pytest.approx(1.3)
    with pytest.raises(ValueError):
        bench.fit_exponent([10], [1.0])


def test_check_targets_flags_met_and_missed():
    rows = [{"estimator": "forward", "median_s": 1.0, "ratio_to_forward": 1.0},
            {"estimator": "lai", "median_s": 2.0, "ratio_to_forward": 2.0, "peak_ratio_to_ghost": 0.4},
            {"estimator": "ghost", "median_s": 1.0, "ratio_to_forward_backward": 1.2},
            {"estimator": "exact", "median_s": 30.0}]
    got = {t["target"]: t["met"] for t in bench.check_targets("mlp", {"costs": {"rows": rows}})}
    assert got["lai time / forward(train+ref)"] is False
    assert got["lai peak / ghost peak"] is True
    assert got["ghost time / forward+backward(train+ref)"] is True
    assert got["exact time / ghost time"] is True


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "x.json"
    bench.atomic_write(p, "1")
    bench.atomic_write(p, "2")
    assert p.read_text() == "2" and os.listdir(tmp_path) == ["x.json"]
    assert p.stat().st_mode & 0o777 == 0o644


def test_check_targets_by_cpu_clock_reads_cpu_ratios():
    rows = [{"estimator": "lai", "ratio_to_forward": 9.0, "cpu_ratio_to_forward": 1.2, "peak_ratio_to_ghost": None}]
    got = bench.check_targets("cnn", {"costs": {"rows": rows}}, clock="cpu")
    assert got[0]["met"] is True and got[0]["clock"] == "cpu"
    assert bench.check_targets("cnn", {"costs": {"rows": rows}})[0]["met"] is False
    with pytest.raises(ValueError):
        bench.check_targets("cnn", {}, clock="sundial")
