"""``python -m xpconv.cli``: the ``xpconv`` command."""
import sys

from . import main

sys.exit(main())
