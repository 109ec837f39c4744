"""CheXpert v1.0 (or CheXpert-v1.0-small) -> medclip manifest (labels only: no reports are published).

The recipe lives in the package, ``medclip.recipes.chexpert``; run it as ``medclip recipe chexpert ROOT -o MANIFEST``.
This script keeps ``python datasets/chexpert/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.chexpert import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.chexpert import main

if __name__ == "__main__":
    sys.exit(main())
