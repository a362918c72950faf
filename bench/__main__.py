"""`python -m bench` (from the repository root): see bench/README.md or `python -m bench --help`."""

import sys

from bench.cli import main

sys.exit(main())
