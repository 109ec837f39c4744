"""covid-chestxray-dataset (Cohen et al.) -> medclip manifest.

The recipe lives in the package, ``medclip.recipes.covid_chestxray``; run it as ``medclip recipe covid_chestxray ROOT -o MANIFEST``.
This script keeps ``python datasets/covid_chestxray/recipe.py ROOT -o MANIFEST`` working (same options).
"""

import sys

from medclip.recipes.covid_chestxray import *  # noqa: F401,F403  (records() and the rest, for scripts that load this file)
from medclip.recipes.covid_chestxray import main

if __name__ == "__main__":
    sys.exit(main())
