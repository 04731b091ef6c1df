"""``python -m paper_figs`` (see paper_figs/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
