"""`python -m workers.checklist`: see workers.checklist.cli."""

import sys

from workers.checklist.cli import main

if __name__ == "__main__":
    sys.exit(main())
