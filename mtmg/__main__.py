"""``python -m mtmg``: the command line."""

from mtmg.cli import main

raise SystemExit(main())
