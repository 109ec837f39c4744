"""covid-chestxray-dataset (Cohen et al.) -> medclip manifest.

Layout: ROOT/metadata.csv (patientid, offset, sex, age, finding, view, modality, folder, filename,
clinical_notes, license, ...) and ROOT/<folder>/<filename>. One study per (patient, offset).
The `finding` column becomes labels (COVID-19, other pneumonias, No Finding); the clinical notes
(which mix history and imaging findings) become the report text, parsed into sections when they have headers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medclip.recipes.base import concept_id, run_recipe

PNEUMONIA_FINDINGS = (
    "COVID-19",
    "SARS",
    "MERS",
    "Pneumonia",
    "Pneumocystis",
    "Streptococcus",
    "Legionella",
    "Klebsiella",
    "E.Coli",
    "Bacterial",
    "Viral",
    "Influenza",
    "Chlamydophila",
    "Mycoplasma",
    "Lipoid",
    "Aspergillosis",
    "Nocardia",
    "Varicella",
    "Herpes",
)


def records(root: Path) -> pd.DataFrame:
    """The recipe's records table from metadata.csv."""
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    finding = meta["finding"].fillna("")
    out = pd.DataFrame(
        {
            "path": meta["folder"].str.strip() + "/" + meta["filename"].str.strip(),
            "patient": meta["patientid"].str.strip(),
            "study": meta["patientid"].str.strip() + "/" + meta["offset"].replace("", "0"),
            "view_position": meta["view"].str.replace("AP Supine", "AP").str.replace("?", "", regex=False),
            "modality": meta["modality"].replace({"X-ray": "CR/DX"}),
            "sex": meta["sex"],
            "age": meta["age"],
            "report_text": meta["clinical_notes"],  # case notes mixing history and imaging findings: the training text
        }
    )
    known = finding.ne("") & finding.ne("todo")
    out[f"label.{concept_id('COVID-19')}"] = np.where(known, finding.str.contains("COVID-19").astype(float), np.nan)
    is_pneu = finding.map(lambda f: any(p.lower() in f.lower() for p in PNEUMONIA_FINDINGS))
    out[f"label.{concept_id('Pneumonia')}"] = np.where(known, is_pneu.astype(float), np.nan)
    out[f"label.{concept_id('No Finding')}"] = np.where(known, (finding == "No Finding").astype(float), np.nan)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "covid-chestxray-dataset", lambda root, seed: records(root), argv, prog=prog)
