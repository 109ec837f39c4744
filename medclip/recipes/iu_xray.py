"""Indiana University chest X-rays (Open-i) -> medclip manifest.

Layout (the widely used Kaggle/Open-i packaging): ROOT/indiana_reports.csv (uid, MeSH, Problems,
image, indication, comparison, findings, impression), ROOT/indiana_projections.csv (uid, filename,
projection) and the PNGs in ROOT/images/images_normalized/ (or ROOT/images/, found either way).
Each uid is one study of one patient (the collection has no separate patient id). Labels come from
`medclip label` on the report text; the human MeSH `Problems` are kept for evaluation as
`mesh_problems`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medclip.recipes.base import run_recipe


def records(root: Path) -> pd.DataFrame:
    """One row per projection image with its study's report sections."""
    reports = pd.read_csv(root / "indiana_reports.csv", dtype=str, keep_default_na=False)
    proj_path = root / "indiana_projections.csv"
    if not proj_path.exists():
        raise FileNotFoundError(f"{root}: indiana_projections.csv not found (it maps report uids to image files)")
    proj = pd.read_csv(proj_path, dtype=str, keep_default_na=False)
    df = proj.merge(reports, on="uid", how="inner")
    where = {p.name: p.relative_to(root).as_posix() for p in root.glob("images/**/*.png")}
    view = df["projection"].map({"Frontal": "PA/AP", "Lateral": "LL"}).fillna("")
    return pd.DataFrame(
        {
            "path": [where.get(f, f"images/images_normalized/{f}") for f in df["filename"]],
            "patient": "iu-" + df["uid"],
            "study": df["uid"],
            "view_position": view,
            "modality": "CR/DX",
            "report_indication": df["indication"],
            "report_findings": df["findings"],
            "report_impression": df["impression"],
            "report_text": ("FINDINGS: " + df["findings"] + "\nIMPRESSION: " + df["impression"]).str.strip(),
            "mesh_problems": df["Problems"],
        }
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing]."""
    return run_recipe(__doc__, "IU X-ray (Open-i)", lambda root, seed: records(root), argv, prog=prog)
