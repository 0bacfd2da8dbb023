"""`python -m polypstream` (installed) or `python -m service` (a checkout): the CLI."""

import sys

from .cli import main

sys.exit(main())
