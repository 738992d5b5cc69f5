"""`python -m ntkode COMMAND ...`: the same as the `ntkode` command."""

import sys

from .studies._cli import main

sys.exit(main())
