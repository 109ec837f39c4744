"""MIMIC-CXR-JPG 2.x (+ MIMIC-CXR free-text reports) -> medclip manifest.

Layout (as published on PhysioNet):
  ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...
  ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
  ROOT/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 CheXpert labels (1, 0, -1, blank)
  ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg
  ROOT/files/p10/p10000032/s50414267.txt   (reports, from mimic-cxr-reports.zip; optional)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from medclip.data.recipes import label_columns_from, run_recipe

CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices"]


def _csv(root: Path, stem: str) -> pd.DataFrame:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).exists():
            return pd.read_csv(root / name)
    raise FileNotFoundError(f"{root}: {stem}.csv(.gz) not found (is this the MIMIC-CXR-JPG folder?)")


def records(root: Path) -> pd.DataFrame:
    """One row per JPEG with its study's report and CheXpert labels."""
    meta = _csv(root, "mimic-cxr-2.0.0-metadata")
    split = _csv(root, "mimic-cxr-2.0.0-split")[["dicom_id", "split"]]
    labels = _csv(root, "mimic-cxr-2.0.0-chexpert")
    df = meta.merge(split, on="dicom_id", how="left").merge(labels, on=["subject_id", "study_id"], how="left")
    folder = df.apply(lambda r: f"files/p{str(r.subject_id)[:2]}/p{r.subject_id}/s{r.study_id}", axis=1)
    reports = []
    for f in folder:
        p = root / (f + ".txt")
        reports.append(p.read_text(errors="replace") if p.exists() else "")
    out = pd.DataFrame({"path": folder + "/" + df["dicom_id"] + ".jpg", "patient": df["subject_id"].astype(str),
                        "study": df["study_id"].astype(str), "split": df["split"],
                        "view_position": df.get("ViewPosition", pd.Series([""] * len(df))).fillna(""),
                        "modality": "CR/DX", "report_text": reports})
    for col, new in label_columns_from(df, CHEXPERT_LABELS).items():
        out[new] = df[col]
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "MIMIC-CXR-JPG", lambda root, seed: records(root), argv)


if __name__ == "__main__":
    sys.exit(main())
