"""`python -m kubekv_server` runs the `kubekv` command."""

import sys

from kubekv_server.cli import main

sys.exit(main())
