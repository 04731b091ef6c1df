"""The option vocabulary every ``lai`` subcommand shares, defined once.

    --out DIR       where the command writes (each command's help says what goes there)
    --seeds LIST    the seeds to run: comma-separated integers and inclusive ranges, e.g. ``0``, ``0-4``,
                    ``0,3,7``, ``0-2,5`` (always a list of seed values, never a count)
    --threads N     torch CPU threads (default 1 everywhere; 0 = torch's own default, all cores). Small models
                    gain nothing from intra-op threads, and several multi-threaded processes on shared cores
                    spend most of their time spinning
    --device DEV    torch device, e.g. cpu, cuda, cuda:1
    --no-progress   no progress bars
    --quiet         only the results (implies --no-progress)

One spelling per idea: ``--models LIST`` names the models (or workloads) a command runs (``--model`` and
``--workload`` are accepted as old spellings), ``--resume DIR`` continues an interrupted command's results folder,
``--profile NAME`` picks a scale preset (``quick``, ``full``; ``tiny`` for tests). A shared option that means
nothing for a command is still accepted by its parser, and using it is a usage error saying why
(:func:`add_not_applicable`).

Every parser made here shows its defaults in ``--help``. Exit statuses of every subcommand: 0 success, 1 a
check failed (or the command crashed, with a traceback on stderr), 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

DEFAULT_THREADS = 1
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
SHARED = ("--out", "--seeds", "--threads", "--device", "--no-progress", "--quiet")  # every subcommand parses these
PROFILE_NAMES = ("quick", "full", "tiny")  # the scale presets --profile may name, in every command


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default shown after its help (not for flags, or where the help already says it); the
    description printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, [], "") and action.nargs != 0
        if shown and "%(default)" not in text and "(default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (``prog: error: ... (see prog --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser named ``prog`` whose description is ``doc`` (a module docstring) and that shows defaults."""
    return Parser(prog=prog, description=(doc or "").strip(), formatter_class=HelpFormatter)


def out_dir(text: str) -> str:
    """``--out``'s type: a folder that exists or can be created and written (not a regular file, not under one)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable ({str(parent)!r} is not writable by this user)")
    return text


class NotApplicable(argparse.Action):
    """A shared option that means nothing for this command: parsed (with or without a value), then refused."""

    def __init__(self, option_strings: Sequence[str], dest: str, reason: str = "", **kwargs: Any) -> None:
        self.reason = reason
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS,
                         help=f"not applicable: {reason}", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} does not apply to this command: {self.reason}")


def add_not_applicable(p: argparse.ArgumentParser, reasons: dict[str, str]) -> None:
    """Shared options (``{"--seeds": why}``) this command accepts only to refuse them with the reason (exit 2)."""
    for option, reason in reasons.items():
        p.add_argument(option, action=NotApplicable, reason=reason, metavar="-")


def add_models(p: argparse.ArgumentParser, choices: Sequence[str], default: str = "all", what: str = "models",
               dest: str = "models") -> None:
    """``--models LIST`` (old spellings ``--model``, ``--workload``): the models or workloads a command runs."""
    p.add_argument("--models", "--model", "--workload", dest=dest, default=default, metavar="LIST",
                   help=f"{what}: comma-separated, from {', '.join(choices)}, or all (--model and --workload are "
                        "old spellings)")


class _ResumeInto(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        namespace.resume = True
        if values is not None:
            namespace.out = out_dir(values)


def add_resume(p: argparse.ArgumentParser, what: str, *, into_out: bool = False) -> None:
    """``--resume DIR``: continue the interrupted results in DIR. ``into_out``: the command's results folder is
    ``--out`` (``--resume DIR`` sets it; a bare ``--resume`` continues ``--out``), and ``args.resume`` is a flag."""
    if into_out:
        p.add_argument("--resume", nargs="?", const=None, default=False, action=_ResumeInto, metavar="DIR",
                       help=f"{what} (DIR: the folder to continue; without DIR, --out's)")
    else:
        p.add_argument("--resume", metavar="DIR", default=None, help=what)


def parse_seeds(text: str) -> list[int]:
    """``"0-2,5"`` -> [0, 1, 2, 5]: comma-separated non-negative integers and inclusive ranges, no repeats."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                items = list(range(lo, hi + 1))
            else:
                items = [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad seed list {text!r}: use integers and ranges, e.g. 0, 0-4, 0,3,7") from None
        if any(s < 0 for s in items):
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: seeds are >= 0")
        seeds.extend(s for s in items if s not in seeds)
    return seeds


def threads_arg(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("--threads must be >= 0 (0: torch's default)")
    return n


def add_out(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    p.add_argument("--out", type=out_dir, default=default, metavar="DIR", help=what)


def add_seeds(p: argparse.ArgumentParser, default: str | None, what: str = "seeds to run") -> None:
    # a string default goes through parse_seeds too, and --help shows it as written (e.g. 0-2)
    p.add_argument("--seeds", type=parse_seeds, default=default, metavar="LIST",
                   help=f"{what}: integers and inclusive ranges, e.g. 0-4 or 0,3,7")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=threads_arg, default=DEFAULT_THREADS, metavar="N",
                   help="torch CPU threads (0: torch's default, all cores)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", default=default, help="torch device, e.g. cpu, cuda, cuda:1")


def add_output_control(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="print only the results (implies --no-progress)")


def add_common(p: argparse.ArgumentParser, *, out: tuple[str | None, str] | None = None,
               seeds: tuple[str | None, str] | None = None, threads: bool = True, device: bool = True) -> None:
    """Add the shared options a command takes: ``out=(default, help)``, ``seeds=(default, help)``, ``--threads``,
    ``--device``, and always ``--no-progress``/``--quiet``."""
    if out is not None:
        add_out(p, *out)
    if seeds is not None:
        add_seeds(p, *seeds)
    if threads:
        add_threads(p)
    if device:
        add_device(p)
    add_output_control(p)


def progress_enabled(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


def info(args: argparse.Namespace, *parts: object) -> None:
    """An informational line on stdout (stderr carries only progress and warnings); silent with --quiet."""
    if not getattr(args, "quiet", False):
        print(*parts, flush=True)


def check_device(p: argparse.ArgumentParser, device: str) -> None:
    """Usage error (exit 2) for a device torch cannot use here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        p.error(f"--device {device!r}: {exc}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {device!r}: CUDA is not available on this machine")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (n = 0: leave torch's default); yields the count."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def fail(message: str) -> int:
    """Print ``error: message`` on stderr; the usage-error status."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def split_list(text: str, allowed: tuple[str, ...] | None = None, what: str = "item") -> list[str]:
    """``"a,b"`` -> ["a", "b"]: the one list syntax of every option (comma-separated, no repeats); ``all``
    expands to ``allowed``; an item not in ``allowed`` raises ArgumentTypeError naming the choices."""
    out: list[str] = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if allowed is not None and item == "all":
            out.extend(a for a in allowed if a not in out)
            continue
        if allowed is not None and item not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {', '.join([*allowed, 'all'])}")
        if item not in out:
            out.append(item)
    return out


__all__ = ["SHARED", "PROFILE_NAMES", "Parser", "out_dir", "NotApplicable", "add_not_applicable", "add_models",
           "add_resume", "split_list", "DEFAULT_THREADS", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_USAGE", "HelpFormatter", "make_parser",
           "parse_seeds", "add_common", "add_out", "add_seeds", "add_threads", "add_device", "add_output_control",
           "progress_enabled", "info", "check_device", "torch_threads", "fail"]
