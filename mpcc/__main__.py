"""`python -m mpcc` runs the command line."""

import sys

from mpcc.cli import main

sys.exit(main())
