"""`python -m edgecore` is the `edgecore` command."""

from .cli import main

raise SystemExit(main())
