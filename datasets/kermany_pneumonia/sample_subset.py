"""Build the bundled Kermany subset (``medclip/sample/kermany``) from the full set, reproducibly.

One image per patient, a fixed number per subtype (normal / bacterial / viral), drawn with a seed,
converted to grayscale, resized to SIZE x SIZE and re-encoded as JPEG, with a per-file attribution
(CC BY 4.0 requires saying what changed). Usage:

    python datasets/kermany_pneumonia/sample_subset.py ../shared/data/kermany_pneumonia medclip/sample/kermany
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import records  # noqa: E402  (this folder's recipe: one reader of both layouts)

COUNTS = {"normal": 150, "bacterial": 105, "viral": 105}
SOURCE = {
    "license": "CC BY 4.0",
    "doi": "10.17632/rscbjbr9sj.2",
    "url": "https://data.mendeley.com/datasets/rscbjbr9sj/2",
    "citation": "Kermany DS et al., Cell 2018;172(5):1122-1131",
}


def build(root: Path, out: Path, size: int = 160, seed: int = 0, counts: dict[str, int] = COUNTS) -> pd.DataFrame:
    """Write ``out/images/*.jpeg``, ``out/labels.csv`` and ``out/ATTRIBUTION.csv``; returns the labels table."""
    rec = records(root)
    rec["patient_key"] = rec["patient"].str.removeprefix("kermany-")
    first = rec.drop_duplicates("patient_key")
    picked = pd.concat([first[first["subtype"] == s].sample(n, random_state=seed) for s, n in counts.items()])
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, attribution = [], []
    for r in picked.sort_values("path").itertuples():
        name = Path(r.path).name
        with Image.open(root / r.path) as im:
            im.convert("L").resize((size, size), Image.BICUBIC).save(out / "images" / name, "JPEG", quality=85)
        label = "NORMAL" if r.subtype == "normal" else "PNEUMONIA"
        rows.append({"image": f"images/{name}", "label": label, "subtype": r.subtype, "patient_key": r.patient_key})
        attribution.append(
            {
                "file": f"images/{name}",
                "source_filename": Path(r.path).as_posix(),
                **SOURCE,
                "changes": f"grayscale, resized to {size}x{size} px, JPEG quality 85",
            }
        )
    labels = pd.DataFrame(rows)
    labels.to_csv(out / "labels.csv", index=False)
    pd.DataFrame(attribution).to_csv(out / "ATTRIBUTION.csv", index=False)
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the Kermany set (labels.csv layout or the published folders)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    labels = build(args.root, args.out, args.size, args.seed)
    print(
        f"{len(labels)} images -> {args.out}: "
        + ", ".join(f"{k} {v}" for k, v in labels["subtype"].value_counts().items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
