"""`python -m workers.replay --help`: see workers.replay.cli."""

import sys

from workers.replay.cli import main

sys.exit(main())
