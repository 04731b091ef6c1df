"""Stored validation runs: ``paper_figs.stored_run.export`` keeps only the compact tables of a run folder, the
stored folder is a run folder ``lai figures`` draws from, and ``lai figures --paper`` reads the stored data."""

import json
import shutil

import pytest
from test_paper_figs import write_run

from paper_figs import stored_run
from paper_figs.cli import is_run_folder, main


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


def test_export_of_one_suite_replaces_its_tables_and_keeps_the_rest(tmp_path):
    """``--suite fidelity``: the fidelity suite's tables (fidelity, auroc, scores, layer_terms, training) come from
    the new run; bound and cost, config.json and the earlier invocations stay; both exports are listed."""
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "stored"
    write_run(old, models=("mlp",))
    (old / "provenance.json").write_text(json.dumps({"invocations": [{"argv": ["lai", "run", "old"]}]}))
    stored_run.export(old, out, note="bound and cost")
    write_run(new, models=("mlp",))
    lines = (new / "fidelity.csv").read_text().splitlines()
    (new / "fidelity.csv").write_text("\n".join(lines[:2]) + "\n")  # a different table: one row
    (new / "bound.csv").write_text("model\nchanged\n")  # not the fidelity suite's: must not be stored
    (new / "provenance.json").write_text(json.dumps({"invocations": [{"argv": ["lai", "run", "new"]}]}))
    before = {n: (out / n).read_bytes() for n in ("bound.csv", "cost.csv", "config.json")}
    written = stored_run.export(new, out, note="fidelity again", suites=["fidelity"])
    assert (out / "fidelity.csv").read_bytes() == (new / "fidelity.csv").read_bytes()
    assert {n: (out / n).read_bytes() for n in before} == before
    assert "bound.csv" not in {p.name for p in written}
    prov = json.loads((out / "provenance.json").read_text())
    assert [i["argv"][-1] for i in prov["invocations"]] == ["old", "new"] and "export" not in prov
    assert [e["note"] for e in prov["exports"]] == ["bound and cost", "fidelity again"]
    assert prov["exports"][1]["suites"] == ["fidelity"] and "fidelity.csv" in prov["exports"][1]["tables"]
    assert stored_run.suite_tables(["fidelity"]) == ["fidelity.csv", "auroc.csv", "scores.csv", "layer_terms.csv",
                                                     "training.csv"]
    with pytest.raises(ValueError, match="unknown suite"):
        stored_run.export(new, out, suites=["fidelty"])
    with pytest.raises(FileNotFoundError, match="not a stored run folder"):
        stored_run.export(new, tmp_path / "nowhere", suites=["fidelity"])


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


def test_export_compresses_large_tables_and_figures_read_them(tmp_path):
    from validation.report.tables import read_table

    run = tmp_path / "run"
    write_run(run, models=("mlp",))
    big = (run / "scores.csv").stat().st_size
    out = tmp_path / "stored"
    written = stored_run.export(run, out, gzip_mb=big / 2**20 / 2)  # scores.csv is over the threshold
    names = {p.name for p in written}
    assert "scores.csv.gz" in names and "scores.csv" not in names and not (out / "scores.csv").exists()
    assert (out / "fidelity.csv").is_file() or (out / "fidelity.csv.gz").is_file()
    plain, packed = read_table(run / "scores.csv"), read_table(out / "scores.csv")  # the .gz is read in its place
    assert packed is not None and packed.columns == plain.columns and len(packed.rows) == len(plain.rows)
    assert_rounded_scores(plain, packed)
    again = tmp_path / "stored2"
    stored_run.export(run, again, gzip_mb=big / 2**20 / 2)
    assert (again / "scores.csv.gz").read_bytes() == (out / "scores.csv.gz").read_bytes()  # reproducible bytes
    stored_run.export(run, out)  # below the default threshold now: the plain table replaces the compressed one
    assert (out / "scores.csv").is_file() and not (out / "scores.csv.gz").exists()
    with pytest.raises(ValueError, match="MB limit"):
        stored_run.export(run, tmp_path / "stored3", gzip_mb=0.0, max_mb=1e-6)
    assert not (tmp_path / "stored3" / "scores.csv.gz").exists()  # nothing written when a file is refused


def test_figures_draw_from_a_stored_folder_with_compressed_scores(tmp_path, monkeypatch, capsys):
    stored = tmp_path / "data" / "validation"
    write_run(tmp_path / "run", models=("mlp",))
    stored_run.export(tmp_path / "run", stored, gzip_mb=0.0)  # every table compressed
    assert not list(stored.glob("*.csv")) and list(stored.glob("*.csv.gz"))
    monkeypatch.setattr(stored_run, "STORED_RUN", stored)
    monkeypatch.chdir(tmp_path)
    assert main(["--paper", "--formats", "png", "--dpi", "30", "--only", "1,4"]) == 0
    assert (tmp_path / "results" / "paper-figures" / "fig4_scatter.png").is_file()


def assert_rounded_scores(plain, stored) -> None:
    """Every column as in the run folder, except ``score``: the same value to 8 significant digits."""
    for a, b in zip(plain.rows, stored.rows):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        x, y = float(a["score"]), float(b["score"])
        assert abs(x - y) <= 5e-8 * abs(x) and y == float(f"{x:.8g}")


def test_scores_are_stored_with_8_significant_digits_and_other_tables_unchanged(tmp_path):
    from validation.report.tables import read_table

    run = tmp_path / "run"
    write_run(run, models=("mlp",))
    out = tmp_path / "stored"
    stored_run.export(run, out)
    assert_rounded_scores(read_table(run / "scores.csv"), read_table(out / "scores.csv"))
    for table in ("fidelity.csv", "bound.csv"):
        assert (out / table).read_bytes() == (run / table).read_bytes()


def test_the_report_is_recomputed_from_a_stored_folder(tmp_path):
    """``python -m validation.report.summary --stored``: summary.json and report.md from the stored CSV tables
    alone (no units), with the paired comparisons and the bottom lines first."""
    from validation.report.summary import main as summary_main
    from validation.report.summary import write_stored_report

    run, stored = tmp_path / "run", tmp_path / "stored"
    write_run(run, models=("mlp",))
    stored_run.export(run, stored, gzip_mb=0.0)  # every table compressed: read in place of the plain ones
    s = write_stored_report(stored, curate=tmp_path / "none", out=tmp_path / "again")
    assert s["verdict"][0] == "- **Bottom lines**:" and s["evidence"]["spearman"]["mlp"]
    assert any(c["question"] == "fidelity" for c in s["comparisons"])
    md = (tmp_path / "again" / "report.md").read_text()
    assert md.index("Bottom lines") < md.index("Software checks") and not (stored / "units").exists()
    assert summary_main([str(stored), "--stored", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "summary.json").is_file()


def test_figures_paper_recomputes_the_committed_tables(tmp_path, monkeypatch, capsys):
    """``lai figures --paper`` is the one command for the paper: besides the figures it recomputes the report,
    its summary and the curation study's paired tables from the stored data, byte-identical to the committed ones
    (a stored report left stale after its tables changed fails here)."""
    from validation.report.curation import STORED

    monkeypatch.chdir(tmp_path)
    assert main(["--paper", "--formats", "png", "--dpi", "20", "--only", "6"]) == 0
    out = tmp_path / "results" / "paper-figures"
    assert "tables recomputed from the stored data" in capsys.readouterr().out
    for name in ("report.md", "summary.json"):
        assert (out / name).read_bytes() == (stored_run.STORED_RUN / name).read_bytes(), name
    for name in ("paired.csv", "paired.md"):
        assert (out / "curation" / name).read_bytes() == (STORED / name).read_bytes(), name
