"""``python -m hephaestus_trio``: the command line."""

from .cli import main

raise SystemExit(main())
