"""Kermany et al. 2018 pediatric chest X-rays (normal / bacterial / viral pneumonia) -> medclip manifest.

Layouts read: the shared packaging (ROOT/labels.csv with ``image, label, subtype, patient_key``),
and the published Mendeley / Kaggle folders (ROOT/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg, also under
ROOT/chest_xray/), where the subtype and the patient come from the file name
(``person1493_bacteria_3896.jpeg``, ``IM-0115-0001.jpeg``). Label-only data: no report text; the
labels (``pneumonia``, ``no_finding``) let training turn them into text (``data.label_text``), and
``subtype`` (normal / bacterial / viral) is kept for evaluation. Split by patient key (a patient's
images stay together); the official train/test folders are kept when the published layout has them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from medclip.recipes.base import concept_id, run_recipe, write_recipe_manifest
from medclip.sample import SAMPLE_KERMANY

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.I)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.I)
SUBTYPES = {"bacteria": "bacterial", "bacterial": "bacterial", "virus": "viral", "viral": "viral", "normal": "normal"}


def parse_name(filename: str) -> tuple[str, str]:
    """(patient key, subtype) from a published file name; ValueError naming the file when it fits no pattern."""
    stem = Path(filename).name
    m = _PERSON.match(stem)
    if m:
        return m.group(1).lower(), SUBTYPES[m.group(2).lower()]
    m = _NORMAL.match(stem)
    if m:
        return m.group(1).upper(), "normal"
    raise ValueError(f"{filename}: not a Kermany file name (personN_bacteria|virus_M or IM-NNNN-NNNN)")


def _published(root: Path) -> pd.DataFrame:
    base = root / "chest_xray" if (root / "chest_xray").is_dir() else root
    rows = []
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for f in sorted((base / split / label).glob("*.jp*g")):
                patient, subtype = parse_name(f.name)
                rows.append(
                    {
                        "image": f.relative_to(root).as_posix(),
                        "label": label,
                        "subtype": subtype,
                        "patient_key": patient,
                        "split": split,
                    }
                )
    if not rows:
        raise FileNotFoundError(f"{root}: neither labels.csv nor train|test/NORMAL|PNEUMONIA/*.jpeg found")
    return pd.DataFrame(rows)


def records(root: Path) -> pd.DataFrame:
    """The recipe's records table (one row per image)."""
    root = Path(root)
    table = root / "labels.csv"
    if table.is_file():
        meta = pd.read_csv(table, dtype=str, keep_default_na=False)
        missing = {"image", "label", "patient_key"} - set(meta.columns)
        if missing:
            raise ValueError(f"{table}: missing columns {sorted(missing)}")
        if "subtype" not in meta:
            meta["subtype"] = [parse_name(p)[1] for p in meta["image"]]
    else:
        meta = _published(root)
    label = meta["label"].str.strip().str.upper()
    unknown = sorted(set(label) - {"NORMAL", "PNEUMONIA"})
    if unknown:
        raise ValueError(f"{root}: unknown label values {unknown} (expected NORMAL / PNEUMONIA)")
    out = pd.DataFrame(
        {
            "path": meta["image"].str.strip(),
            "patient": "kermany-" + meta["patient_key"].str.strip(),
            "view_position": "AP/PA",
            "modality": "CR/DX",
            "body_part": "CHEST",
            "subtype": meta["subtype"].str.strip().str.lower().map(lambda s: SUBTYPES.get(s, s)),
        }
    )
    pneumonia = (label == "PNEUMONIA").to_numpy(dtype=float)
    out[f"label.{concept_id('Pneumonia')}"] = pneumonia
    out[f"label.{concept_id('No Finding')}"] = 1.0 - pneumonia
    # The official split, when the layout has one with more than one value (the shared copy is train only:
    # then the recipe splits by patient).
    splits = meta.get("split", pd.Series([], dtype=str)).str.strip().str.lower()
    if len(splits) == len(meta) and splits.nunique() > 1 and splits.ne("").all():
        out["split"] = np.where(splits == "val", "val", splits)
    return out


# The bundled Kermany subset (CC BY 4.0; see medclip/sample/README.md): its location's one owner is medclip.sample.
#: Its split: half the patients train, a fifth choose thresholds, the rest (108 patients) measure.
SAMPLE_KERMANY_FRACTIONS = (0.5, 0.2, 0.3)


def sample_kermany_manifest(output: Path, *, salt: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Manifest of the bundled Kermany subset (label-only pediatric chest X-rays), split by patient 50/20/30."""
    return write_recipe_manifest(
        records(SAMPLE_KERMANY),
        SAMPLE_KERMANY,
        output,
        salt=salt,
        seed=seed,
        name="bundled Kermany subset",
        fractions=SAMPLE_KERMANY_FRACTIONS,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "Kermany pediatric pneumonia", lambda root, seed: records(root), argv, prog=prog)
