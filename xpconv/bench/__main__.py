"""``python -m xpconv.bench [options]``: see ``python -m xpconv.bench --help``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m xpconv.bench"))
