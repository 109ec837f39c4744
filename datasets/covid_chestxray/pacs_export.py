"""Turn covid-chestxray-dataset (Cohen et al.) into a realistic PACS-like export.

The code lives in the package, ``medclip.recipes.pacs_export`` (``python -m medclip.recipes.pacs_export``);
this script keeps ``python datasets/covid_chestxray/pacs_export.py SOURCE OUT_DIR`` working (same options).
"""

import sys

from medclip.recipes.pacs_export import *  # noqa: F401,F403  (make_pacs_export and the rest)
from medclip.recipes.pacs_export import main

if __name__ == "__main__":
    sys.exit(main())
