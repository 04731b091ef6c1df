"""The README's "Score your own dataset" example runs as written (in a temporary folder)."""

import os
import pathlib
import re
import subprocess
import sys


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
    from validation.report_render import README_COST

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for est, (_, words, (lo, hi)) in README_COST.items():
        assert f"{lo:g}–{hi:g} × {words}" in readme, est
