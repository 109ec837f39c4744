"""Kermany et al. 2018 pediatric chest X-rays (normal / bacterial / viral pneumonia) -> medclip manifest.

The recipe lives in the package, ``medclip.recipes.kermany_pneumonia``; run it as ``medclip recipe kermany_pneumonia ROOT -o MANIFEST``.
This script keeps ``python datasets/kermany_pneumonia/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.kermany_pneumonia import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.kermany_pneumonia import main

if __name__ == "__main__":
    sys.exit(main())
