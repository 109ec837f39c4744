"""Turn covid-chestxray-dataset (Cohen et al.) into a realistic PACS-like export.

Writes one DICOM file per image (DX, JPEG Baseline encapsulated, MONOCHROME2) in
``<study>/<series>/IMxxxx.dcm`` folders, with synthetic patient name, ID, birth date and accession
number planted in the headers (and the name in the report text), plus ``reports.csv`` keyed by
accession number. The planted identifiers are fake; they let tests prove that medclip removes them.

Usage::

    python -m medclip.recipes.pacs_export ../shared/data/covid_cxr OUT_DIR [--licence cc-by] [--max-images N]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: Licences that allow redistribution of modified copies inside an Apache-2.0 project.
CC_BY = {"CC BY", "CC BY 3.0", "CC BY 4.0"}
VIEW_TO_DICOM = {"PA": "PA", "AP": "AP", "AP Supine": "AP", "L": "LL", "AP semi erect": "AP"}


@dataclass
class PlantedPHI:
    """The synthetic identifiers written for one patient."""

    name: str
    patient_id: str
    birth_date: str


def planted_phi(patient: str) -> PlantedPHI:
    """Deterministic fake identifiers for a dataset patient id."""
    n = int("".join(ch for ch in patient if ch.isdigit()) or 0)
    return PlantedPHI(
        name=f"Zzplanted{n:04d}^Quinn", patient_id=f"MRN{n:06d}X", birth_date=f"19{40 + n % 50:02d}0{1 + n % 9}1{n % 9}"
    )


def derived_report(row: dict) -> str:
    """Report text for an image: its clinical notes, else a sentence built from the dataset's labels."""
    notes = (row.get("clinical_notes") or "").strip()
    if notes:
        return notes
    finding = (row.get("finding") or "").strip()
    view = (row.get("view") or "").strip()
    if finding in {"", "todo"}:
        return ""
    if finding == "No Finding":
        return f"{view} chest radiograph. No acute cardiopulmonary abnormality."
    return f"{view} chest radiograph. Findings consistent with {finding} pneumonia."


def _jpeg_gray(path: Path, max_size: int) -> tuple[bytes, int, int]:
    with Image.open(path) as source:
        im = source.convert("L")
        im.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90, subsampling=0)
        return buf.getvalue(), im.height, im.width


def make_pacs_export(
    source: str | Path,
    out_dir: str | Path,
    *,
    licences: set[str] | None = None,
    max_images: int | None = None,
    max_size: int = 512,
) -> dict:
    """Write the export; returns {"n_images", "patients": {dataset_id: PlantedPHI}, "reports": path}."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

    source, out_dir = Path(source), Path(out_dir)
    rows = list(csv.DictReader(open(source / "metadata.csv", newline="", encoding="utf-8")))
    if licences is not None:
        rows = [r for r in rows if r["license"].strip() in licences]
    rows = [r for r in rows if (source / r["folder"] / r["filename"]).exists()]
    if max_images is not None:
        rows = rows[:max_images]
    out_dir.mkdir(parents=True, exist_ok=True)
    studies: dict[tuple[str, str], dict] = {}
    patients: dict[str, PlantedPHI] = {}
    attributions = []
    for r in rows:
        pid = r["patientid"].strip()
        phi = patients.setdefault(pid, planted_phi(pid))
        skey = (pid, r["offset"].strip() or "0")
        if skey not in studies:
            k = len(studies) + 1
            studies[skey] = {
                "folder": f"study_{k:04d}",
                "uid": generate_uid(entropy_srcs=["medclip-covid", pid, skey[1]]),
                "accession": f"ACC{k:07d}",
                "reports": [],
                "n": 0,
            }
        st = studies[skey]
        st["n"] += 1
        jpeg, rows_, cols = _jpeg_gray(source / r["folder"] / r["filename"], max_size)
        sop_uid = generate_uid(entropy_srcs=["medclip-covid-image", r["filename"]])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]  # no file yet
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = phi.name, phi.patient_id, phi.birth_date
        ds.PatientSex = (r.get("sex") or "").strip()[:1]
        age = (r.get("age") or "").strip()
        if age.replace(".", "").isdigit():
            ds.PatientAge = f"{int(float(age)):03d}Y"
        ds.AccessionNumber = st["accession"]
        ds.StudyInstanceUID = st["uid"]
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medclip-covid-series", st["uid"], r["filename"]])
        ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20200301", "1", 1, 1
        ds.InstitutionName = "Zzplanted General Hospital"
        ds.Modality = "DX"
        ds.ViewPosition = VIEW_TO_DICOM.get((r.get("view") or "").strip(), "")
        ds.BodyPartExamined = "CHEST"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows_, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        folder = out_dir / st["folder"] / "series_1"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"IM{st['n']:04d}.dcm", enforce_file_format=True)
        text = derived_report(r)
        if text and text not in st["reports"]:
            st["reports"].append(text)
        attributions.append(
            {
                "file": f"{st['folder']}/series_1/IM{st['n']:04d}.dcm",
                "source_filename": r["filename"],
                "license": r["license"].strip(),
                "doi": r.get("doi", ""),
                "url": r.get("url", ""),
            }
        )
    report_path = out_dir / "reports.csv"
    with open(report_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "report"])
        for (pid, _), st in studies.items():
            if st["reports"]:
                first, last = patients[pid].name.split("^")[::-1]
                w.writerow(
                    [
                        st["accession"],
                        f"INDICATION: Chest radiograph of {first} {last}.\nFINDINGS: {' '.join(st['reports'])}",
                    ]
                )
    with open(out_dir / "ATTRIBUTION.csv", "w", newline="", encoding="utf-8") as fh:
        table = csv.DictWriter(fh, fieldnames=["file", "source_filename", "license", "doi", "url"])
        table.writeheader()
        table.writerows(attributions)
    return {"n_images": len(rows), "patients": patients, "reports": report_path}


def main(argv: list[str] | None = None) -> int:
    """Command line: SOURCE OUT_DIR [--licence cc-by|all] [--max-images N] [--max-size PX]."""
    ap = argparse.ArgumentParser(prog="python -m medclip.recipes.pacs_export", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="covid-chestxray-dataset folder (metadata.csv + images/)")
    ap.add_argument("out_dir")
    ap.add_argument(
        "--licence",
        choices=["cc-by", "all"],
        default="cc-by",
        help="cc-by: only images whose licence allows redistribution of modified copies",
    )
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--max-size", type=int, default=512, help="longest side in pixels")
    args = ap.parse_args(argv)
    res = make_pacs_export(
        args.source,
        args.out_dir,
        licences=CC_BY if args.licence == "cc-by" else None,
        max_images=args.max_images,
        max_size=args.max_size,
    )
    print(f"wrote {res['n_images']} DICOM files for {len(res['patients'])} patients to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
