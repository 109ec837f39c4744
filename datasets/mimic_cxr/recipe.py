"""MIMIC-CXR-JPG 2.x (+ MIMIC-CXR free-text reports) -> medclip manifest.

The recipe lives in the package, ``medclip.recipes.mimic_cxr``; run it as ``medclip recipe mimic_cxr ROOT -o MANIFEST``.
This script keeps ``python datasets/mimic_cxr/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.mimic_cxr import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.mimic_cxr import main

if __name__ == "__main__":
    sys.exit(main())
