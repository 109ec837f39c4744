"""CheXpert v1.0 (or CheXpert-v1.0-small) -> medclip manifest (labels only: no reports are published).

Layout: ROOT/train.csv, ROOT/valid.csv with columns Path (e.g. CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg), Sex, Age, Frontal/Lateral, AP/PA and the 14 observations (1, 0, -1, blank).
Path is relative to ROOT's parent. The official valid set becomes "test" (it is the one with expert
labels); a validation split is carved from train by patient.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medclip.data.splits import assign_split
from medclip.recipes.base import label_columns_from, run_recipe

CHEXPERT_LABELS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


def records(root: Path, seed: int = 0) -> pd.DataFrame:
    """One row per image; paths made relative to ROOT."""
    parts = []
    for name, split in (("train.csv", None), ("valid.csv", "test")):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root}: {name} not found (is this the CheXpert folder?)")
        df = pd.read_csv(root / name)
        df["_split"] = split
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    rel = df["Path"].map(lambda p: Path(*Path(p).parts[1:]).as_posix())  # strip the "CheXpert-v1.0*/" prefix
    patient = rel.map(lambda p: Path(p).parts[1])
    study = rel.map(lambda p: "/".join(Path(p).parts[1:3]))
    splits = [
        s if isinstance(s, str) else ("val" if assign_split(p, (0.9, 0.1, 0.0), seed) == "val" else "train")
        for s, p in zip(df["_split"], patient)
    ]
    out = pd.DataFrame(
        {
            "path": rel,
            "patient": patient,
            "study": study,
            "split": splits,
            "sex": df.get("Sex"),
            "age": df.get("Age"),
            "view_position": df.get("AP/PA", pd.Series([""] * len(df))).fillna(""),
            "modality": "CR/DX",
        }
    )
    for col, new in label_columns_from(df, CHEXPERT_LABELS).items():
        out[new] = df[col]
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "CheXpert", lambda root, seed: records(root, seed), argv, prog=prog)
