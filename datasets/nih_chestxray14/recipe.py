"""NIH ChestX-ray14 -> medclip manifest (labels only: no reports are published).

The recipe lives in the package, ``medclip.recipes.nih_chestxray14``; run it as ``medclip recipe nih_chestxray14 ROOT -o MANIFEST``.
This script keeps ``python datasets/nih_chestxray14/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.nih_chestxray14 import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.nih_chestxray14 import main

if __name__ == "__main__":
    sys.exit(main())
