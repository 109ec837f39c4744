"""medclip triage demo: the repository's launcher of the page in ``medclip/demo/app.py``.

    python app.py                                   # the quick start's model, http://127.0.0.1:7860
    python app.py --checkpoint DIR --port 8080 --auth user:pass
    medclip demo --checkpoint DIR                   # the same, also from an installed wheel

Research use only, not for diagnosis.
"""

import sys

from medclip.demo.app import main

if __name__ == "__main__":
    sys.exit(main())
