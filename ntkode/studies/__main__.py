"""`python -m ntkode.studies COMMAND ...`: the same as the `ntkode` command."""

import sys

from ._cli import main

sys.exit(main())
