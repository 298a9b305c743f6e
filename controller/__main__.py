"""`python -m controller`: the same as the `portico` command."""

import sys

from controller.cli import main

sys.exit(main())
