"""MedPix 2.0 (Siragusa et al. 2025; images and text from the U.S. NLM's MedPix) -> medclip manifest.

The recipe lives in the package, ``medclip.recipes.medpix``; run it as ``medclip recipe medpix ROOT -o MANIFEST``.
This script keeps ``python datasets/medpix/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.medpix import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.medpix import main

if __name__ == "__main__":
    sys.exit(main())
