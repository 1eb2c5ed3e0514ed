"""`python -m mpcc.serving cluster init | party | deploy | predict`."""

import sys

from mpcc.serving.commands import main

sys.exit(main())
