"""The bundled sample data, shipped inside the package (found through ``importlib.resources``, so an installed
wheel has it without the repository). The one owner of where the sample lies; see ``README.md`` here for the
sources, licences (CC BY) and the changes made.

- :data:`SAMPLE_EXPORT`: a tiny PACS-like export, 67 chest radiographs of 32 patients as DICOM with
  ``reports.csv`` (:data:`SAMPLE_REPORTS`): what ``medclip quickstart`` indexes and the demo's examples.
- :data:`SAMPLE_KERMANY`: 360 label-only pediatric chest X-rays (Kermany et al., CC BY 4.0),
  ``labels.csv`` + ``images/`` + ``ATTRIBUTION.csv``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["SAMPLE_DIR", "SAMPLE_EXPORT", "SAMPLE_KERMANY", "SAMPLE_REPORTS"]

#: This folder (pip installs packages as plain folders, so the data are ordinary files).
SAMPLE_DIR = Path(str(files(__name__)))
SAMPLE_EXPORT = SAMPLE_DIR / "export"
SAMPLE_REPORTS = SAMPLE_EXPORT / "reports.csv"
SAMPLE_KERMANY = SAMPLE_DIR / "kermany"
