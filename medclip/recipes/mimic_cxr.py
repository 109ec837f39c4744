"""MIMIC-CXR-JPG 2.x (+ MIMIC-CXR free-text reports) -> medclip manifest.

Layout (as published on PhysioNet):
  ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...
  ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
  ROOT/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 CheXpert labels (1, 0, -1, blank)
  ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg
  ROOT/files/p10/p10000032/s50414267.txt   (reports, from mimic-cxr-reports.zip; optional)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from medclip.recipes.base import label_columns_from, recipe_parser, write_recipe_manifest
from medclip.recipes.chexpert import CHEXPERT_LABELS  # MIMIC-CXR-JPG ships the CheXpert labeler's 14 labels


def _csv(root: Path, stem: str) -> pd.DataFrame:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).exists():
            return pd.read_csv(root / name)
    raise FileNotFoundError(f"{root}: {stem}.csv(.gz) not found (is this the MIMIC-CXR-JPG folder?)")


def _read_report(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:  # reports are optional (mimic-cxr-reports.zip is a separate download)
        return ""


def read_reports(root: Path, folders: list[str], workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """Report text of each study folder (``files/pXX/pN/sM`` -> ``files/pXX/pN/sM.txt``), read by a thread
    pool (the work is file-system latency, e.g. 227k small files on network storage), with a progress bar."""
    unique = list(dict.fromkeys(folders))
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        texts = list(
            tqdm(
                pool.map(_read_report, (root / (f + ".txt") for f in unique), chunksize=64),
                total=len(unique),
                desc="reading reports",
                unit=" reports",
                disable=not progress,
            )
        )
    return dict(zip(unique, texts))


def records(root: Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per JPEG with its study's report and CheXpert labels."""
    meta = _csv(root, "mimic-cxr-2.0.0-metadata")
    split = _csv(root, "mimic-cxr-2.0.0-split")[["dicom_id", "split"]]
    labels = _csv(root, "mimic-cxr-2.0.0-chexpert")
    df = meta.merge(split, on="dicom_id", how="left").merge(labels, on=["subject_id", "study_id"], how="left")
    subject = df["subject_id"].astype(str)
    folder = "files/p" + subject.str[:2] + "/p" + subject + "/s" + df["study_id"].astype(str)
    texts = read_reports(root, folder.tolist(), workers, progress)
    reports = folder.map(texts)
    out = pd.DataFrame(
        {
            "path": folder + "/" + df["dicom_id"] + ".jpg",
            "patient": df["subject_id"].astype(str),
            "study": df["study_id"].astype(str),
            "split": df["split"],
            "view_position": df.get("ViewPosition", pd.Series([""] * len(df))).fillna(""),
            "modality": "CR/DX",
            "report_text": reports,
        }
    )
    for col, new in label_columns_from(df, CHEXPERT_LABELS).items():
        out[new] = df[col]
    return out


def build_parser(prog: str | None = None):
    """The recipe's command line (the shared recipe options with -q/-v, report-reading threads)."""
    ap = recipe_parser(__doc__.strip().splitlines()[0], prog=prog)
    ap.add_argument(
        "--workers", type=int, default=None, help="threads reading report files (default: 4 x CPUs, max 32)"
    )
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing] [--workers N] [-q]."""
    args = build_parser(prog).parse_args(argv)
    write_recipe_manifest(
        records(args.root, args.workers, not args.quiet),
        args.root,
        args.output,
        salt=args.salt,
        seed=args.seed,
        require_files=not args.keep_missing,
        name="MIMIC-CXR-JPG",
    )
    return 0
