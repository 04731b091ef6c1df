"""Run folders, atomic files, config ids, table assembly, and the agreement metrics."""

import json
import math
import os
import subprocess

import pytest
import torch

from validation.report.results import (
    PACKAGE_ROOT,
    TABLES,
    ResumeMismatchError,
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    code_revision,
    config_id,
    default_run_dir,
    git_revision,
    jsonable,
    provenance,
    read_csv,
    read_json,
)
from validation.suites.metrics import kendall, noisy_auroc, sign_agreement, spearman, topk_overlap, topk_size

pytestmark = pytest.mark.usefixtures("one_thread")


def test_json_is_strict_and_round_trips(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": float("nan"), "t": torch.tensor([1.5, 2.0]), "tup": (1, 2), "inf": math.inf})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(path) == {"x": None, "t": [1.5, 2.0], "tup": [1, 2], "inf": None}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_csv_round_trip_keeps_full_precision(tmp_path):
    rows = [{"a": 0.1 + 0.2, "b": None, "c": True, "d": [1, 2]}, {"a": float("nan"), "b": "x"}]
    n = atomic_write_csv(tmp_path / "t.csv", rows, ["a", "b", "c", "d"])
    back = read_csv(tmp_path / "t.csv")
    assert n == 2 and float(back[0]["a"]) == 0.1 + 0.2
    assert back[0]["b"] == "" and back[0]["c"] == "1" and json.loads(back[0]["d"]) == [1, 2]
    assert math.isnan(float(back[1]["a"])) and back[1]["c"] == ""


def test_config_id_is_canonical():
    a = {"x": 1, "y": {"b": [1, 2], "a": (3,)}}
    b = {"y": {"a": [3], "b": [1, 2]}, "x": 1}
    assert config_id(a) == config_id(b)
    assert config_id(a) != config_id({**a, "x": 2})
    assert default_run_dir("res", {"profile": "quick", **a}).name == f"quick-{config_id({'profile': 'quick', **a})}"


def test_run_dir_refuses_a_different_config(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.init({"profile": "tiny", "seeds": [0]})
    rd.init({"profile": "tiny", "seeds": [0]})  # same config: fine (resume)
    with pytest.raises(ValueError, match="different configuration"):
        rd.init({"profile": "tiny", "seeds": [1]})


def test_units_assemble_into_tables_and_shared_rows_count_once(tmp_path):
    rd = RunDir(tmp_path)
    rd.init({"profile": "tiny"})
    train_row = {"model": "mlp", "seed": 0, "step": 1, "ref_loss": 2.0, "ref_accuracy": 0.1}
    for step in (1, 2):
        rd.write_unit("fidelity", "mlp", f"step{step}", {"tables": {
            "auroc": [{"model": "mlp", "seed": 0, "step": step, "estimator": "lai", "auroc": 0.5, "n": 4,
                       "n_noisy": 1}],
            "training": [dict(train_row, step=step)]}}, seed=0)
    rd.write_unit("bound", "mlp", "step1", {"tables": {"training": [train_row]}}, seed=0)
    assert rd.has_unit("fidelity", "mlp", "step2", seed=0) and not rd.has_unit("fidelity", "mlp", "step3", seed=0)
    counts = rd.write_tables()
    assert counts == {"auroc": 2, "training": 2}
    assert [r["step"] for r in read_csv(tmp_path / "auroc.csv")] == ["1", "2"]
    assert list(read_csv(tmp_path / "auroc.csv")[0]) == TABLES["auroc"][1]
    assert rd.remove_units("fidelity", "mlp") == 2 and not rd.has_unit("fidelity", "mlp", "step1", seed=0)


def test_checkpoints_round_trip(tmp_path):
    rd = RunDir(tmp_path)
    state = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    rd.save_checkpoint("mlp", 0, 5, state)
    back = rd.load_checkpoint("mlp", 0, 5)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert rd.load_checkpoint("mlp", 0, 6) is None


def test_provenance_records_versions_and_git():
    p = provenance(["x"])
    assert p["argv"] == ["x"] and torch.__version__.startswith(p["packages"]["torch"].split("+")[0])
    assert set(p["git"]) == {"commit", "dirty"}
    assert jsonable(p) == p


def test_atomic_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        atomic_write_csv(tmp_path / "b.csv", [{"a": 1}], ["a"])
        assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]  # no temporary files left


def _run_with_units(tmp_path, **extra):
    rd = RunDir(tmp_path / "run")
    rd.init({"profile": "tiny", "code": "git:abc", "threads": 1, **extra})
    rd.write_unit("fidelity", "mlp", "step1", {"tables": {"auroc": [{"model": "mlp", "step": 1}]}}, seed=0)
    return rd


@pytest.mark.parametrize("content", ["{\"tables\": {", "{}", "[1, 2]", ""])
def test_corrupt_or_empty_units_are_moved_aside_and_recomputed(tmp_path, content):
    rd = _run_with_units(tmp_path)
    path = rd.unit_path("fidelity", "mlp", "step2", seed=0)
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="computed again"):
        assert not rd.has_unit("fidelity", "mlp", "step2", seed=0)
    assert not path.exists() and path.with_name("step2.json.corrupt").exists()
    assert [u["tables"]["auroc"][0]["step"] for u in rd.iter_units("fidelity")] == [1]  # the report still works
    rd.write_unit("fidelity", "mlp", "step2", {"tables": {}}, seed=0)  # recomputed
    assert rd.has_unit("fidelity", "mlp", "step2", seed=0)
    with pytest.raises(ValueError, match="empty unit"):
        rd.write_unit("fidelity", "mlp", "step3", {}, seed=0)


def test_corrupt_unit_met_while_assembling_tables_warns_and_is_left_for_the_rerun(tmp_path):
    rd = _run_with_units(tmp_path)
    rd.unit_path("fidelity", "mlp", "step9", seed=0).write_text("{not json")
    with pytest.warns(RuntimeWarning, match="step9.json"):
        assert rd.write_tables() == {"auroc": 1}


def test_units_are_stamped_and_other_revisions_or_threads_refused(tmp_path):
    rd = _run_with_units(tmp_path)
    unit = read_json(rd.unit_path("fidelity", "mlp", "step1", seed=0))
    assert unit["_run"] == {"code": "git:abc", "threads": 1}
    other = dict(unit, _run={"code": "git:def", "threads": 1})
    atomic_write_json(rd.unit_path("fidelity", "mlp", "step2", seed=0), other)
    with pytest.raises(ResumeMismatchError, match="refusing to mix"):
        rd.has_unit("fidelity", "mlp", "step2", seed=0)
    rd.check_resumable("git:abc", 1)
    with pytest.raises(ResumeMismatchError, match="code"):
        rd.check_resumable("git:def", 1)
    with pytest.raises(ResumeMismatchError, match="--threads 1"):
        rd.check_resumable("git:abc", 2)


def test_code_revision_and_threads_key_the_run_folder():
    base = {"profile": "quick", "seeds": [0]}
    ids = {default_run_dir("r", {**base, "code": c, "threads": t}).name for c in ("git:a", "git:b") for t in (1, 2)}
    assert len(ids) == 4


def test_provenance_is_this_packages_revision_not_the_working_directorys(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env=env)
    other = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                           check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    p = provenance(["x"])
    assert p["git"]["commit"] != other and p["git"] == git_revision(PACKAGE_ROOT)
    assert p["lai"]["revision"] == code_revision()
    # a folder inside a repository but not its top level (an installed copy in a venv) has no git revision
    (tmp_path / "site").mkdir()
    assert git_revision(tmp_path / "site") == {"commit": None, "dirty": None}


# ------------------------------------------------------------------------------------------------ metrics

def test_rank_metrics():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert kendall(a, a) == pytest.approx(1.0)
    assert kendall(a, torch.tensor([1.0, 2.0, 4.0, 3.0])) == pytest.approx(2 / 3)
    assert math.isnan(spearman(a, torch.ones(4)))


def test_topk_and_sign():
    a = torch.tensor([5.0, 4.0, -1.0, -2.0, 0.5])
    b = torch.tensor([4.0, -3.0, 5.0, -2.0, 0.1])
    assert topk_overlap(a, b, 2) == 0.5            # {0,1} vs {2,0}
    assert topk_overlap(a, b, 2, largest=False) == 0.5  # {3,2} vs {1,3}
    assert sign_agreement(a, b) == pytest.approx(3 / 5)
    assert topk_size(64, 0.1) == 7 and topk_size(3, 0.1) == 1
    with pytest.raises(ValueError):
        topk_overlap(a, b, 0)


def test_noisy_auroc_uses_low_scores_as_the_detector():
    noisy = torch.tensor([True, False, False, True])
    assert noisy_auroc(noisy, torch.tensor([-2.0, 1.0, 3.0, -1.0])) == 1.0
    assert noisy_auroc(noisy, torch.tensor([2.0, -1.0, -3.0, 1.0])) == 0.0
    assert math.isnan(noisy_auroc(torch.zeros(4, dtype=torch.bool), torch.randn(4)))
