"""``python -m validation <command> [options]``.

Commands:
    run     the validation suites (bound, fidelity, cost) into a resumable run folder (validation/cli.py)
    bench   cost benchmark of the estimators (validation/bench.py)
    curate  curated-training comparison (validation/curation/cli.py)

Each command's module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "run": ("validation.cli", "run_main"),
    "bench": ("validation.bench", "main"),
    "curate": ("validation.curation.cli", "main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, fn_name = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"`{command}` is not available: module {module_name} is missing ({exc})", file=sys.stderr)
            return 2
        raise
    fn = getattr(module, fn_name, None)
    if fn is None:
        print(f"`{command}` is not available: {module_name} has no {fn_name}()", file=sys.stderr)
        return 2
    result = fn(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
