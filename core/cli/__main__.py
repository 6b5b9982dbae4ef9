"""`python -m mgm.core.cli`: the `mgm` command."""

import sys

from mgm.core.cli import main

sys.exit(main())
