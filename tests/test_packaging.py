"""The package as others install it: metadata, a light core, and (slow) a wheel built offline, installed into a
fresh environment and used from another directory."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

import influence
from lai.command import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("influence", "theory", "validation", "paper_figs", "lai")
OPTIONAL = ("tqdm", "matplotlib", "sklearn", "mnist1d", "transformers", "datasets")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_metadata_license_version_and_extras():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["dynamic"] == ["version"] and "version" not in project
    assert _pyproject()["tool"]["hatch"]["version"]["path"] == "influence/_version.py"
    core = {d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]}
    assert core == {"torch", "numpy", "scipy", "sympy"}
    extras = project["optional-dependencies"]
    assert {"validation", "hf", "test", "all"} <= set(extras)
    assert any(d.startswith("matplotlib") for d in extras["validation"])
    assert project["scripts"] == {"lai": "lai.command:main"}
    assert "paper_figs/data" in _pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["exclude"]
    assert {"mkdocs", "mkdocstrings[python]"} <= {d.split(">")[0] for d in extras["docs"]}
    assert influence.__version__.count(".") == 2


def test_core_imports_without_the_validation_extras_and_theory_imports_no_validation():
    # the optional packages made unimportable (None in sys.modules), as in an install without the extras
    code = (f"import sys; sys.modules.update(dict.fromkeys({OPTIONAL!r})); import influence, theory, influence.hf; "
            "bad = [m for m in ('validation', 'paper_figs') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lai_help_is_instant_and_lists_every_command():
    proc = subprocess.run([sys.executable, "-c", "import sys; from lai.command import main; "
                           "main(['--help']); print(sorted(m for m in sys.modules if m in ('torch', 'matplotlib')))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and all(name in proc.stdout for name in COMMANDS)
    assert proc.stdout.strip().endswith("[]")  # the dispatcher imports no command module, so no torch either


@pytest.mark.slow
def test_wheel_builds_offline_without_warnings_or_tree_litter_and_installs_elsewhere(tmp_path):
    before = sorted(p.name for p in ROOT.iterdir())
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(wheels)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build_log = (proc.stdout + proc.stderr).lower()
    assert "deprecat" not in build_log and "warning" not in build_log, build_log
    assert sorted(p.name for p in ROOT.iterdir()) == before  # no build/ or *.egg-info written into the tree
    (wheel,) = wheels.glob("lai-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == set(PACKAGES)
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert not [n for n in names if n.startswith("paper_figs/data/")]  # the stored paper data: sdist and clone only
    assert wheel.stat().st_size < 2 * 2 ** 20, wheel.stat().st_size
    assert "License-Expression: MIT" in meta and f"Version: {influence.__version__}" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # a fresh environment that sees this one's third-party packages (torch, ...) but not the source tree
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "validation.py").write_text("raise SystemExit('the local file was imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import influence, theory, lai.command, paper_figs.cli, validation.suites.tightness, sys; "
            "print(influence.__file__); print(influence.__version__)")
    proc = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path, version = proc.stdout.split()
    assert Path(path).is_relative_to(venv) and version == influence.__version__
    lai = venv / "bin" / "lai"
    proc = subprocess.run([str(lai), "--help"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert proc.returncode == 0 and "tightness" in proc.stdout and not proc.stderr, proc.stderr
    for name in COMMANDS:
        proc = subprocess.run([str(lai), name, "--help"], capture_output=True, text=True, cwd=elsewhere, env=env,
                              timeout=300)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: lai {name}"), (name, proc.stderr)
