"""``python -m medclip.eval --checkpoint DIR --manifest M ...`` (same as ``medclip eval``)."""

import sys

from .cli import main

sys.exit(main())
