"""`python -m workers.determinism`: see workers.determinism.cli."""

import sys

from workers.determinism.cli import main

if __name__ == "__main__":
    sys.exit(main())
