"""``python -m lai <command>``: the same as the ``lai`` command (see lai/command.py)."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m lai"))
