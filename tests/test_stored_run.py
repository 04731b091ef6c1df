"""Stored validation runs: ``paper_figs.stored_run.export`` keeps only the compact tables of a run folder, the
stored folder is a run folder ``lai figures`` draws from, and ``lai figures --paper`` reads the stored data."""

import json
import shutil

import pytest

from paper_figs import stored_run
from paper_figs.cli import is_run_folder, main
from test_paper_figs import write_run


def test_export_keeps_tables_and_provenance(tmp_path):
    run = tmp_path / "results" / "full-abc"
    write_run(run, models=("mlp",))
    (run / "units" / "fidelity").mkdir(parents=True)
    (run / "units" / "fidelity" / "x.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "provenance.json").write_text(json.dumps({"invocations": [{"argv": ["lai", "run"]}]}))
    out = tmp_path / "stored"
    written = stored_run.export(run, out, note="one seed")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in written) and "units" not in names and "checkpoints" not in names
    assert {"fidelity.csv", "bound.csv", "config.json", "summary.json", "provenance.json"} <= set(names)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["invocations"][0]["argv"] == ["lai", "run"] and prov["export"]["note"] == "one seed"
    assert prov["export"]["source"] == str(run)
    assert is_run_folder(out)
    assert (out / "fidelity.csv").read_bytes() == (run / "fidelity.csv").read_bytes()


def test_export_refuses_unfinished_runs_and_big_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished run folder"):
        stored_run.export(tmp_path, tmp_path / "out")
    run = tmp_path / "run"
    write_run(run, models=("mlp",))
    with pytest.raises(ValueError, match="MB limit"):
        stored_run.export(run, tmp_path / "out", max_mb=1e-6)


def test_figures_paper_draws_from_the_stored_folders(tmp_path, monkeypatch, capsys):
    stored = tmp_path / "data" / "validation"
    write_run(tmp_path / "run", models=("mlp",))
    stored_run.export(tmp_path / "run", stored)
    monkeypatch.setattr(stored_run, "STORED_RUN", stored)
    monkeypatch.setattr(stored_run, "STORED_CURATION", stored_run.HERE / "data" / "curation")
    monkeypatch.chdir(tmp_path)
    assert main(["--paper", "--formats", "png", "--dpi", "30", "--only", "2,6"]) == 0
    out = capsys.readouterr().out
    figs = tmp_path / "results" / "paper-figures"
    assert (figs / "fig2_fidelity.png").is_file() and (figs / "fig6_curation.png").is_file()
    assert "2 of 2 figures drawn" in out
    write_run(tmp_path / "run2", models=("mlp",), skip=("cost",))
    stored_run.export(tmp_path / "run2", stored)
    (stored / "cost.csv").unlink()
    assert main(["--paper", "--formats", "png", "--dpi", "30", "--only", "5"]) == 1
    assert "produce with: lai run --profile quick --suite cost" in capsys.readouterr().out  # no units to resume
    with pytest.raises(SystemExit):
        main(["--paper", "--run", "quick"])
    shutil.rmtree(figs)
