"""One CLI vocabulary, checked by parsing every subcommand's options: each shared option is on every subcommand
(for real, or refused with its reason: "not applicable"), one spelling per idea, one meaning per option name,
usage errors exit 2 with one line, and without the optional extras every --help works while running a command
prints the install hint and exits 2."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lai.command import COMMANDS
from lai.command import main as dispatch
from validation.options import PROFILE_NAMES, SHARED, NotApplicable

ROOT = Path(__file__).resolve().parent.parent


def parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[name][0]).build_parser(f"lai {name}")


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def table() -> dict[str, dict[str, str]]:
    """{command: {shared option: 'yes' | 'n/a' | 'MISSING'}}."""
    out = {}
    for name in COMMANDS:
        opts = options(parser(name))
        out[name] = {o: "MISSING" if o not in opts else "n/a" if isinstance(opts[o], NotApplicable) else "yes"
                     for o in SHARED}
    return out


def test_every_shared_option_on_every_subcommand():
    t = table()
    width = max(map(len, SHARED))
    print("\n" + f"{'':<10}" + "".join(f"{o:>{width + 2}}" for o in SHARED))
    for name, row in t.items():
        print(f"{name:<10}" + "".join(f"{row[o]:>{width + 2}}" for o in SHARED))
    assert not [(n, o) for n, row in t.items() for o, v in row.items() if v == "MISSING"]
    assert all(row["--threads"] == "yes" and row["--no-progress"] == "yes" for row in t.values())
    # a real option wherever the command can honour it
    assert t["run"] == t["score"] == dict.fromkeys(SHARED, "yes")
    assert t["figures"]["--seeds"] == t["figures"]["--device"] == "yes"  # passed on to `lai run` with --run
    assert t["tightness"]["--out"] == t["curate"]["--seeds"] == "yes"


def test_one_spelling_per_idea_and_one_meaning_per_name():
    seen: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name in COMMANDS:
        p = parser(name)
        for a in p._actions:
            if not a.option_strings or isinstance(a, NotApplicable):
                continue
            assert a.option_strings[0] not in ("--model", "--workload"), (name, a.option_strings)
            if {"--model", "--workload"} & set(a.option_strings):
                assert a.option_strings[0] == "--models", (name, a.option_strings)
            for s in a.option_strings:
                seen.setdefault(s, []).append((name, a))
    assert {n for n, _ in seen["--models"]} >= {"run", "bench", "tightness"}
    for option, uses in seen.items():
        takes_value = {n: a.nargs != 0 for n, a in uses}
        assert len(set(takes_value.values())) == 1, (option, takes_value)  # never a flag here and a value there
    for n, a in seen["--profile"]:
        assert set(a.choices) - {"paper"} <= set(PROFILE_NAMES), (n, a.choices)  # paper: curate's old name of full
    assert {n for n, _ in seen["--resume"]} >= {"run", "bench"}


@pytest.mark.parametrize("name,option", [("curate", "--device"), ("bench", "--seeds"), ("tightness", "--device")])
def test_not_applicable_is_a_one_line_usage_error(name, option, capsys):
    with pytest.raises(SystemExit) as exc:
        dispatch([name, option, "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "does not apply" in err and "Traceback" not in err


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "figures"] + ["figures"])
def test_out_at_a_file_or_under_one_is_a_one_line_usage_error(name, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    for bad in (f, f / "sub"):
        with pytest.raises(SystemExit) as exc:
            dispatch([name, "--out", str(bad)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and "file" in err, err


def test_figures_missing_results_and_options_without_run(tmp_path, capsys):
    for argv in (["--results", str(tmp_path / "missing")], ["--seeds", "0"], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as exc:
            dispatch(["figures", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, (argv, err)


def test_old_spellings_still_parse():
    assert parser("run").parse_args(["--model", "mlp"]).models == "mlp"
    assert parser("bench").parse_args(["--workload", "mlp"]).workload == "mlp"
    args = parser("bench").parse_args(["--resume", "results/bench/x"])
    assert args.resume is True and args.out == "results/bench/x"
    assert parser("curate").parse_args(["--profile", "paper"]).profile == "paper"


BLOCKED = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):  # the core install: none of the optional extras
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"matplotlib", "tqdm", "sklearn", "mnist1d", "transformers", "datasets",
                                  "accelerate"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from lai.command import main
sys.exit(main(sys.argv[1:]))
"""


def core_only(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED, *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_without_the_extras_help_works_and_running_prints_the_hint(tmp_path):
    for name in COMMANDS:
        r = core_only(name, "--help", cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: lai {name}"), (name, r.stderr[-500:])
    runs = {"run": ["--profile", "tiny", "--models", "mlp", "--out", str(tmp_path / "r")],
            "curate": ["--task", "mnist1d-noisy40", "--out", str(tmp_path / "c")],
            "figures": ["--paper", "--out", str(tmp_path / "f")],
            "score": ["--n-train", "100", "--n-ref", "20", "--out", str(tmp_path / "s")]}
    for name, argv in runs.items():
        r = core_only(name, *argv, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr[-800:])
        assert 'pip install "lai[validation]"' in r.stderr and r.stderr.strip().count("\n") == 0, (name, r.stderr)
