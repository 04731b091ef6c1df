"""``python -m paper_figs``: the same as ``lai figures`` (see paper_figs/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m paper_figs"))
