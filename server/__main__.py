"""`python -m infergate.server` runs the CLI."""

import sys

from infergate.server.cli import main

sys.exit(main())
