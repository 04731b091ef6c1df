"""The README's code blocks run as written: every Python block in a fresh process (in a temporary folder), every
`lai` command line of its shell blocks parsed by that command's own parser (the options exist and their values
are valid: the long runs themselves are not started), every script it names exists; and its time statements cite
the committed record of measured times."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
SHELL_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M)


@pytest.mark.parametrize("k", range(len(PYTHON_BLOCKS)))
def test_every_python_block_runs_as_written(k, tmp_path):
    code = PYTHON_BLOCKS[k]
    if "transformers" in code or "influence.hf" in code:
        pytest.importorskip("transformers")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def lai_lines() -> list[list[str]]:
    lines = []
    for block in SHELL_BLOCKS:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "lai":
                lines.append(words[1:])
    return lines


def test_every_lai_command_line_parses():
    import importlib

    from lai.command import COMMANDS

    lines = lai_lines()
    assert len(lines) >= 10 and {w[0] for w in lines} >= {"run", "curate", "bench", "figures"}
    for words in lines:
        module = importlib.import_module(COMMANDS[words[0]][0])
        try:
            module.build_parser(f"lai {words[0]}").parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"`lai {' '.join(words)}` does not parse (exit {exc.code})")


def test_every_script_named_exists_and_the_command_table_is_complete():
    for block in SHELL_BLOCKS:
        for script in re.findall(r"bash (scripts/[\w./-]+)", block):
            assert (ROOT / script).is_file(), script
    from lai.command import COMMANDS

    table = README.split("| command | what it does", 1)[1].split("\n\n", 1)[0]
    assert all(f"| `lai {name}`" in table for name in COMMANDS)


def test_time_statements_cite_the_measured_record():
    """Each row of the command table states times from docs/timings.md, and that file holds those commands."""
    timings = (ROOT / "docs" / "timings.md").read_text()
    table = README.split("| command | what it does", 1)[1].split("\n\n", 1)[0]
    assert "docs/timings.md" in README
    for name in ("figures-paper", "tightness", "run-quick", "curate-quick", "bench-mlp"):
        row = next(ln for ln in timings.splitlines() if ln.startswith(f"| `{name}`"))
        cpu = int(row.split("|")[4])
        assert f"{cpu} s of CPU" in table or f"{round(cpu / 60, 1):g} min of CPU" in table, (name, cpu)


def test_score_your_own_dataset_runs_as_written(tmp_path):
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Score your own dataset", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("tensor(") and "dict_keys" in lines[3]
    assert (tmp_path / "scores" / "ghost" / "scores.pt").exists()


def test_the_report_checks_the_cost_claims_the_readme_makes():
    """The report's "cost vs the README" check reads its ranges from ``README_COST``: the README's cost column
    must state the same ones."""
    from validation.report.checks import README_COST

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for est, (_, words, (lo, hi)) in README_COST.items():
        assert f"{lo:.1f}–{hi:.1f} × {words}" in readme, est
