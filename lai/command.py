"""``lai``: one command for every entry point of the package.

    lai run        validation suites (bound, fidelity, cost) into a resumable run folder, with a report
    lai curate     curated training: methods compared on a noisy-label task, table of final accuracy
    lai bench      cost benchmark of the estimators against a forward pass and a training step
    lai figures    the paper figures from stored results (or produce them first with --run)
    lai tightness  how tight the error bounds are on an MLP, a CNN and a transformer
    lai score      score a whole data set against a reference set with each estimator (throughput, memory)

``lai <command> --help`` lists a command's options with their defaults (also without the optional extras).
Options every command parses: --out, --seeds (a list: 0-4 or 0,3,7), --threads (default 1), --device,
--no-progress, --quiet; where one means nothing for a command, using it is a usage error that says why.
One spelling per idea: --models, --resume DIR, --profile quick|full (validation/options.py).
Exit status: 0 success, 1 a check failed (or a crash, with a traceback), 2 a usage error (one line on stderr,
including a missing optional extra: the line says what to install).
``python -m lai <command>`` is the same command.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name -> (module with ``main(argv, prog) -> int``, one-line summary). Each module is imported only when its
# command runs, so ``lai --help`` is instant and works without the optional extras. A new command (e.g.
# ``score``) is one entry here and a module with that ``main``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("validation.suites.command", "validation suites into a resumable run folder, with report.md"),
    "curate": ("validation.curation.cli", "curated-training comparison on a noisy-label task"),
    "bench": ("validation.bench.command", "cost benchmark of the estimators"),
    "figures": ("paper_figs.cli", "paper figures from stored results"),
    "tightness": ("validation.suites.tightness", "how tight the error bounds are"),
    "score": ("validation.bench.score", "score a whole data set with each estimator: throughput and peak memory"),
}
EXTRAS_HINT = 'pip install "lai[validation]"'
HF_MODULES = ("transformers", "datasets", "accelerate", "tokenizers", "huggingface_hub")  # the hf extra
OWN = ("influence", "theory", "validation", "paper_figs", "lai")


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The install hint for a missing optional package (None when the missing module is this package's own)."""
    top = (exc.name or "").split(".")[0]
    if not top or top in OWN:
        return None
    return 'pip install "lai[hf]"' if top in HF_MODULES else EXTRAS_HINT


def usage(prog: str = "lai") -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} [-h] [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines) + "\n\n" + __doc__.split("\n\n", 2)[2].strip()


def main(argv: Sequence[str] | None = None, prog: str = "lai") -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        return 0 if argv else 2
    if argv[0] == "--version":
        from influence._version import __version__  # imports influence (and torch): only when asked

        print(f"lai {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{prog}: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:  # every command's --help works on the core install (its module imports its extras when it runs)
        module = importlib.import_module(module_name)
        status = module.main(rest, prog=f"{prog} {name}")
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"{prog} {name}: error: needs the optional package {exc.name.split('.')[0]!r}: {hint}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
