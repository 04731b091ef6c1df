"""`lai run` end to end on the tiny profile (outputs, summary keys, resume, reproducibility) and the `lai` command's
shared options, help texts and exit statuses."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lai.command import COMMANDS
from lai.command import main as dispatch
from validation.options import parse_seeds, split_list
from validation.report.results import RunDir, read_csv
from validation.settings.profiles import get_profile
from validation.suites.command import apply_override, build_parser, make_config, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--profile", "tiny", "--models", "mlp", "--no-progress", "--set", "cost.repeats=1",
        "--set", "mlp.cost_widths=[8]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, _run(results)


def _run(results: Path, extra=()) -> Path:
    """Run the command, check its status, return the last line printed (the run folder)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run_main([*ARGS, "--out", str(results), *extra])
    assert status == 0
    lines = out.getvalue().strip().splitlines()
    return Path(lines[-1])


def test_run_folder_holds_report_summary_tables_and_provenance(run):
    results, folder = run
    assert folder.parent == results and folder.name.startswith("tiny-")
    for name in ("config.json", "provenance.json", "summary.json", "report.md", "fidelity.csv", "auroc.csv",
                 "scores.csv", "cost.csv", "training.csv"):
        assert (folder / name).exists(), name
    s = json.loads((folder / "summary.json").read_text())
    for key in ("bound_violations", "spearman_vs_exact", "noisy_auroc", "cost_ratio_to_train_step"):
        assert key in s
    assert set(s["spearman_vs_exact"]["mlp"]) >= {"lai", "lai-last", "ghost", "tracin", "loss", "counterfactual"}
    assert s["spearman_vs_exact"]["mlp"]["ghost"] == pytest.approx(1.0)
    assert 0.0 <= s["noisy_auroc"]["mlp"]["lai"] <= 1.0
    assert s["cost_ratio_to_train_step"]["mlp"]["train_step"] == pytest.approx(1.0)
    if s["bound_violations"] is not None:  # once the theory package exports its functions
        assert s["bound_violations"] == 0 and (folder / "bound.csv").exists()
    prov = json.loads((folder / "provenance.json").read_text())["invocations"][0]
    assert prov["packages"]["torch"] and "commit" in prov["git"]
    config = json.loads((folder / "config.json").read_text())
    assert config["profile"] == "tiny" and config["cost"]["repeats"] == 1
    assert config["models"]["mlp"]["cost_widths"] == [8]
    report = (folder / "report.md").read_text()
    assert "## Checks" in report and "Spearman vs Exact" in report
    steps = get_profile("tiny")["models"]["mlp"]["score_points"]
    assert len({r["step"] for r in read_csv(folder / "fidelity.csv")}) == steps


def test_rerun_resumes_without_recomputing_and_reproduces(run):
    results, folder = run
    rd = RunDir(folder)
    before = (folder / "scores.csv").read_text()
    unit = rd.unit_path("fidelity", "mlp", "step6", seed=0)
    first = unit.read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "units").rglob("*.json")}
    unit.unlink()  # as if interrupted before the last step was written
    assert _run(results) == folder
    assert unit.read_text() == first  # recomputed from the checkpoint, same numbers
    assert (folder / "scores.csv").read_text() == before
    for p, t in mtimes.items():
        if p != unit:
            assert p.stat().st_mtime_ns == t, f"{p} was rewritten"
    assert len(json.loads((folder / "provenance.json").read_text())["invocations"]) == 2


def test_resume_by_folder_uses_its_config(run):
    _, folder = run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_main(["--resume", str(folder), "--suite", "fidelity", "--models", "mlp", "--no-progress"]) == 0
    assert out.getvalue().strip().splitlines()[-1] == str(folder)


def test_resume_refuses_other_threads_or_code(run, capsys, monkeypatch):
    _, folder = run
    assert run_main(["--resume", str(folder), "--threads", "2", "--no-progress"]) == 2
    assert "--threads 1" in capsys.readouterr().err
    import validation.suites.command as cli

    monkeypatch.setattr(cli, "code_revision", lambda: "git:other")
    assert run_main(["--resume", str(folder), "--no-progress"]) == 2
    assert "units of both would be mixed" in capsys.readouterr().err


def test_failed_theory_check_exits_1(tmp_path, monkeypatch):
    import validation.report.summary as report

    monkeypatch.setattr(report, "failed_theory_checks", lambda summary: ["bound holds"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run_main([*ARGS, "--suite", "fidelity", "--out", str(tmp_path)])
    assert status == 1 and "FAILED theory checks: bound holds" in out.getvalue()


def test_overrides_and_parser():
    config = make_config(build_parser().parse_args(["--profile", "tiny", "--seeds", "3-4", "--set", "*.steps=7"]))
    assert config["seeds"] == [3, 4] and all(m["steps"] == 7 for m in config["models"].values())
    assert config["threads"] == 1 and config["code"]
    apply_override(config, "mlp.noise={\"kind\": \"symmetric\", \"rate\": 0.4}")
    assert config["models"]["mlp"]["noise"]["rate"] == 0.4
    with pytest.raises(Exception, match="unknown setting"):
        apply_override(config, "mlp.nonsense=1")
    with pytest.raises(SystemExit) as exc:
        run_main(["--suite", "nonsense"])
    assert exc.value.code == 2


def test_one_seed_and_list_syntax():
    assert parse_seeds("0") == [0] and parse_seeds("0-2,5") == [0, 1, 2, 5] and parse_seeds("3,1,3") == [3, 1]
    for bad in ("a", "2-1", "-1", "1,,x"):
        with pytest.raises(Exception, match="bad seed list"):
            parse_seeds(bad)
    assert split_list("b, a,b", ("a", "b", "c")) == ["b", "a"] and split_list("all", ("a", "b")) == ["a", "b"]
    with pytest.raises(Exception, match="choose from a, b, all"):
        split_list("z", ("a", "b"))


def test_dispatch_statuses(capsys, monkeypatch):
    assert dispatch(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    monkeypatch.setitem(COMMANDS, "ghostcmd", ("validation.no_such_module", "x"))
    with pytest.raises(ModuleNotFoundError):  # a missing module of this package is a bug, not a usage error
        dispatch(["ghostcmd"])
    monkeypatch.setitem(COMMANDS, "extra", ("no_such_optional_dependency", "x"))
    assert dispatch(["extra"]) == 2 and "lai[validation]" in capsys.readouterr().err
    assert dispatch(["--help"]) == 0 and dispatch([]) == 2
    assert dispatch(["--version"]) == 0


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_the_shared_vocabulary_and_its_own_name(name, capsys):
    with pytest.raises(SystemExit) as exc:
        dispatch([name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: lai {name}") and "--quiet" in text and "--no-progress" in text
    assert "(default: " in text
    if name != "figures":
        assert "--threads N" in text and "(default: 1)" in text
    with pytest.raises(SystemExit) as exc:
        dispatch([name, "--no-such-option"])
    assert exc.value.code == 2


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "lai", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "run" in out.stdout and "bench" in out.stdout and not out.stderr
    help_text = build_parser().format_help()
    assert "--suite" in help_text and "--resume" in help_text and "--device" in help_text


def test_curation_hint_writes_where_figures_look(tmp_path):
    from paper_figs.cli import resolve
    from paper_figs.figures import curation_command

    root, src = resolve(str(tmp_path / "res"), None)
    cmd = curation_command("quick", src.curate)
    assert src.curate == root / "curate" and f"--out {root}" in cmd and cmd.startswith("lai curate ")


def test_estimator_registry_one_spelling_and_the_same_numbers_as_influence(f64):
    import influence
    from influence.estimators import estimator_names, get_estimator
    from validation.training.models import MLP

    torch.manual_seed(0)
    model = MLP(6, (5,), 3).double().eval()
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    train, ref = (x[:4], y[:4]), (x[4:], y[4:])
    direct = {"lai-last": influence.lai(model, influence.cross_entropy, train, ref, 0.1, layers="last"),
              "tracin-last": influence.tracin(model, influence.cross_entropy, train, ref, [(model.state_dict(), 0.1)],
                                              last_layer=True),
              "ghost": influence.ghost(model, influence.cross_entropy, train, ref, 0.1)}
    for name, r in direct.items():
        got = influence.estimate(name, model, influence.cross_entropy, train, ref, 0.1).scores
        assert torch.allclose(got, r.scores, rtol=1e-12, atol=0)
    assert all(n == n.lower() and "_" not in n for n in estimator_names())
    with pytest.raises(KeyError, match="spelled 'lai-last'"):
        get_estimator("lai_last")
    assert "lai-aligned" not in estimator_names(sequence_only=False)
    # every list of estimator names validation and the figures use comes from the registry (plus lai-fit and the
    # baselines)
    from influence.curation import METHODS
    from paper_figs import fig2_fidelity, fig5_cost
    from validation.bench import estimator_cost, realsize_run, score, tasks
    from validation.settings import estimators as chosen
    from validation.suites.context import fidelity_estimators
    CURATION_SIGNALS = {m.signal for m in METHODS.values() if m.needs_reference and m.policy != "loss_threshold"}

    baselines = {"forward", "forward_backward", "train_step", *chosen.BASELINES, *chosen.RESEARCH}
    for names in (CURATION_SIGNALS, fidelity_estimators(), chosen.timed(True), estimator_cost.default_names(),
                  fig2_fidelity.default_estimators(), fig5_cost.default_estimators(),
                  realsize_run.real_estimators(), realsize_run.dataset_estimators(), score.choices(), tasks.methods()):
        assert set(names) - baselines <= set(estimator_names()), names


def test_tightness_prints_a_row_per_model_and_seed(capsys):
    status = dispatch(["tightness", "--steps", "0", "--n", "4", "--models", "mlp", "--seeds", "0-1"])
    out = capsys.readouterr().out
    assert status == 0 and out.count("\nmlp ") == 2 and "VIOLATIONS" not in out
    with pytest.raises(SystemExit) as exc:
        dispatch(["tightness", "--models", "resnet"])
    assert exc.value.code == 2
