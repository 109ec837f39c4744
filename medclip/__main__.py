"""``python -m medclip``: the same command line as the ``medclip`` script."""

from medclip.cli import main

raise SystemExit(main())
