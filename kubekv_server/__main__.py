"""`python -m kubekv_server` runs the `kubekv` command."""

import sys

from .cli import main

sys.exit(main())
