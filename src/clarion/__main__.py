"""``python -m clarion``: the ``clarion`` command."""

import sys

from clarion.cli import main

sys.exit(main())
