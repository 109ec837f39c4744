"""NIH ChestX-ray14 -> medclip manifest (labels only: no reports are published).

Layout: ROOT/Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) with Image Index, Finding Labels
("Effusion|Infiltration" or "No Finding"), Patient ID, Patient Age, Patient Gender, View Position;
ROOT/train_val_list.txt and ROOT/test_list.txt (official patient-wise split); images in ROOT/images/
or ROOT/images_0NN/images/ (both found).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medclip.data.splits import assign_split
from medclip.recipes.base import concept_id, run_recipe

NIH_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "No Finding",
]


def records(root: Path, seed: int = 0) -> pd.DataFrame:
    """One row per image; every listed finding is positive, the others negative (NIH labels have no 'uncertain')."""
    entry = next((root / n for n in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv") if (root / n).exists()), None)
    if entry is None:
        raise FileNotFoundError(f"{root}: Data_Entry_2017.csv not found (is this the ChestX-ray14 folder?)")
    df = pd.read_csv(entry)
    where = {p.name: p.relative_to(root).as_posix() for p in root.glob("images*/**/*.png")}
    test = set((root / "test_list.txt").read_text().split()) if (root / "test_list.txt").exists() else set()
    patient = df["Patient ID"].astype(str)
    split = [
        "test" if img in test else ("val" if assign_split(p, (0.9, 0.1, 0.0), seed) == "val" else "train")
        for img, p in zip(df["Image Index"], patient)
    ]
    out = pd.DataFrame(
        {
            "path": [where.get(i, f"images/{i}") for i in df["Image Index"]],
            "patient": patient,
            "study": patient + "/" + df["Follow-up #"].astype(str),
            "split": split,
            "sex": df.get("Patient Gender"),
            "age": df.get("Patient Age"),
            "view_position": df.get("View Position"),
            "modality": "CR/DX",
        }
    )
    findings = df["Finding Labels"].fillna("").str.split("|")
    for name in NIH_LABELS:
        out[f"label.{concept_id(name.replace('_', ' '))}"] = np.array(
            [float(name in f) for f in findings], dtype=np.float32
        )
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "NIH ChestX-ray14", lambda root, seed: records(root, seed), argv, prog=prog)
