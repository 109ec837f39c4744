"""Indiana University chest X-rays (Open-i) -> medclip manifest.

The recipe lives in the package, ``medclip.recipes.iu_xray``; run it as ``medclip recipe iu_xray ROOT -o MANIFEST``.
This script keeps ``python datasets/iu_xray/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.iu_xray import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.iu_xray import main

if __name__ == "__main__":
    sys.exit(main())
