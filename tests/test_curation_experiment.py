"""The curated-training comparison: files written atomically, counts consistent, resumable, rate matching."""

import pytest
import torch

from validation.curation import cli
from validation.curation.experiment import STEP_COLUMNS, SUITE, TABLE_COLUMNS
from validation.curation.tasks import TASKS, evaluate, get_task, prepare
from validation.report.results import read_csv, read_json


def _run(tmp_path, capsys, methods, task="digits-noisy40", extra=()):
    argv = ["--task", task, "--seeds", "0", "--epochs", "1", "--max-train", "256", "--methods", methods,
            "--out", str(tmp_path), "--no-progress", "--timing-steps", "2", *extra]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_comparison_writes_units_steps_and_table_and_resumes(tmp_path, capsys):
    out = _run(tmp_path, capsys, "vanilla,lai,random")
    (run,) = (tmp_path / SUITE).iterdir()
    for m in ("vanilla", "lai", "random"):
        assert f"| {m} |" in out
        unit = read_json(run / "units" / SUITE / "digits-noisy40" / "seed0" / f"{m}.json")
        rows = read_csv(run / "steps" / m / "seed0.csv")
        assert list(rows[0]) == STEP_COLUMNS
        assert len(rows) == unit["steps"] == 256 // 64
        assert 0 <= unit["final"] <= 1 and len(unit["curve"]) == 1
        for r in rows:
            assert int(r["kept"]) >= 1 and int(r["kept"]) / int(r["n"]) == pytest.approx(float(r["kept_fraction"]))
            assert float(r["score_s"]) > 0 and float(r["update_s"]) > 0
        assert unit["noisy_seen"] == sum(int(r["noisy_kept"]) + int(r["noisy_dropped"]) for r in rows)
    lai = read_json(run / "units" / SUITE / "digits-noisy40" / "seed0" / "lai.json")
    rand = read_json(run / "units" / SUITE / "digits-noisy40" / "seed0" / "random.json")
    assert rand["keep_fraction"] == pytest.approx(lai["kept_fraction"])  # dropped at the same rate
    table = read_csv(run / "table.csv")
    assert list(table[0]) == TABLE_COLUMNS and [r["method"] for r in table] == ["vanilla", "lai", "random"]
    assert float(table[0]["time_vs_vanilla"]) == pytest.approx(1.0)
    timing = read_csv(run / "timing.csv")
    assert [r["method"] for r in timing] == ["vanilla", "lai", "random"]
    assert float(timing[0]["time_vs_vanilla"]) == pytest.approx(1.0) and all(float(r["step_ms"]) > 0 for r in timing)
    before = {p: p.stat().st_mtime_ns for p in (run / "units").rglob("*.json")}
    out = _run(tmp_path, capsys, "vanilla,lai,random")
    assert out.count("(done)") == 3
    assert {p: p.stat().st_mtime_ns for p in (run / "units").rglob("*.json")} == before
    assert len(list((run / "provenance.json").read_text().split('"argv"'))) == 3  # two invocations


def test_rate_method_without_its_match_runs_the_match_first(tmp_path, capsys):
    out = _run(tmp_path, capsys, "random", extra=("--match", "lai-last"))
    assert out.index("lai-last seed0") < out.index("random seed0")
    assert "| lai-last |" in out and "| random |" in out


def test_each_rate_matched_control_keeps_its_own_methods_fraction(tmp_path, capsys):
    """random-as-<m> keeps the fraction <m> kept (its target runs first, even when not listed), beside plain
    random matched to --match; the combined rank keeps what its own estimator kept."""
    out = _run(tmp_path, capsys, "random-as-lai-last,random,loss+lai-last")
    assert out.index("lai-last seed0") < out.index("random-as-lai-last seed0")
    (run,) = (tmp_path / SUITE).iterdir()
    unit = lambda m: read_json(run / "units" / SUITE / "digits-noisy40" / "seed0" / f"{m}.json")  # noqa: E731
    assert unit("random-as-lai-last")["keep_fraction"] == pytest.approx(unit("lai-last")["kept_fraction"])
    assert unit("random")["keep_fraction"] == pytest.approx(unit("lai")["kept_fraction"])
    assert unit("loss+lai-last")["keep_fraction"] == pytest.approx(unit("lai-last")["kept_fraction"])
    assert unit("lai")["kept_fraction"] != pytest.approx(unit("lai-last")["kept_fraction"])  # the test can tell


def test_a_match_must_choose_its_own_fraction_and_only_rate_methods_take_one(capsys):
    for bad, words in (("random-as-random", "chooses its own kept fraction"), ("lai-as-lai-last", "only a rate"),
                       ("random-as-nope", "chooses its own kept fraction")):
        with pytest.raises(SystemExit):
            cli.main(["--task", "digits-noisy40", "--methods", bad])
        assert words in capsys.readouterr().err


def test_lm_task_prepares_noisy_documents_and_reports_perplexity(tmp_path, capsys):
    prep = prepare(get_task("lm-pretrain"), 0)
    assert 0 < prep.is_noisy.float().mean() < 0.6 and prep.metric == "perplexity"
    x, y = prep.train
    assert torch.equal(x[:, 1:], y[:, :-1])
    out = _run(tmp_path, capsys, "vanilla,lai", task="lm-pretrain", extra=("--max-train", "32", "--batch-size", "16"))
    assert "perplexity" in out


def test_every_task_has_a_spec_and_evaluate_metrics():
    assert {"mnist1d-noisy40", "mnist1d-noisy20-classdep", "mnist1d-cnn-noisy40", "digits-noisy20",
            "lm-pretrain", "lm-finetune"} <= set(TASKS)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [3.0, 0, 0]])
    assert evaluate(model, (x, torch.tensor([0, 0, 0])), "accuracy") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        get_task("nope")
