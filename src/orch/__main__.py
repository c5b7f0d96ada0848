"""`python -m orch` runs the CLI."""

import sys

from orch.cli import main

sys.exit(main())
