"""MedPix 2.0 (Siragusa et al. 2025; images and text from the U.S. NLM's MedPix) -> medclip manifest.

Layout: ROOT/metadata.csv (``image, case_id, type, modality, plane, location, location_category, age,
sex, caption, case_title, history, findings, diagnosis``) and ROOT/images/*.jpg: CT and MR key images of
teaching cases, each with a radiologist's caption. One case = one patient = one study (split by case:
the images of a case never straddle splits). The caption is the image's report text (findings);
the case history is the indication. Kept for evaluation: ``modality`` (CT / MR), ``plane`` (axial /
coronal / sagittal, else empty), ``body_region`` (12 regions, knowledge-graph concept ids, mapped from
MedPix's ``location``; see ``REGIONS``), ``sequence`` (MedPix's finer modality, e.g. "MR - T2 weighted"),
``case_findings`` and ``diagnosis`` (case-level text, for text-only pre-training).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medclip.recipes.base import run_recipe

#: MedPix ``location`` -> body-region concept id (knowledge/extensions/imaging.yaml). Locations that
#: are not a region ("Generalized", "Pathology", "Hematopoietic", blanks) map to "" (no region).
REGIONS: dict[str, str] = {
    "Brain and Neuro": "region_brain",
    "Nerve, central": "region_brain",
    "Head and Neck": "region_head_neck",
    "Dental, Oral, or Tooth": "region_head_neck",
    "Eye and Orbit": "region_eye_orbit",
    "Ophthalmology": "region_eye_orbit",
    "Spine": "region_spine",
    "Musculoskeletal": "region_musculoskeletal",
    "Nerve, peripheral": "region_musculoskeletal",
    "Chest, Pulmonary": "region_chest",
    "Cardiovascular": "region_heart",
    "Vascular": "region_vessels",
    "Gastrointestinal": "region_abdomen",
    "Abdomen": "region_abdomen",
    "Genitourinary": "region_genitourinary",
    "Breast and Mammography": "region_breast",
    "Endocrine": "region_endocrine",
}
PLANES = {"axial": "axial", "transverse": "axial", "coronal": "coronal", "sagittal": "sagittal"}
MODALITIES = {"CT": "CT", "MR": "MR"}


def records(root: Path) -> pd.DataFrame:
    """One row per key image with its caption and the case's text."""
    table = Path(root) / "metadata.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{root}: metadata.csv not found (the MedPix 2.0 image table)")
    meta = pd.read_csv(table, dtype=str, keep_default_na=False)
    missing = {"image", "case_id", "type", "caption"} - set(meta.columns)
    if missing:
        raise ValueError(f"{table}: missing columns {sorted(missing)}")
    get = lambda c: meta[c].str.strip() if c in meta else pd.Series([""] * len(meta))  # noqa: E731
    return pd.DataFrame(
        {
            "path": get("image"),
            "patient": "medpix-" + get("case_id"),
            "study": get("case_id"),
            "modality": get("type").str.upper().map(MODALITIES).fillna(""),
            "body_part": get("location_category"),
            "sex": get("sex"),
            "age": get("age"),
            "report_indication": get("history"),
            "report_findings": get("caption"),
            "report_text": get("caption"),
            "plane": get("plane").str.lower().map(PLANES).fillna(""),
            "body_region": get("location").map(REGIONS).fillna(""),
            "sequence": get("modality"),
            "case_findings": get("findings"),
            "diagnosis": get("diagnosis"),
        }
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "MedPix 2.0", lambda root, seed: records(root), argv, prog=prog)
