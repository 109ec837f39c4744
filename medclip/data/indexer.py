"""Index a PACS export (folders of DICOM / NIfTI / PNG / JPEG + reports) into a de-identified manifest.

The run reads each file's header in parallel workers, groups DICOM slices into volumes, links reports,
scrubs identifiers from report text, hashes every identifier with a salt, assigns patient-level splits,
and writes ``manifest.parquet`` plus two sidecars: ``<manifest>.skipped.csv`` (what could not be read,
and why) and ``<manifest>.files.parquet`` (per-file state that makes re-runs incremental). Raw PHI is
never written: the state keeps only salted hashes, including hashes of name and ID tokens, which is
how report text is scrubbed of a patient's own identifiers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import medclip.io  # noqa: F401  (imported before the worker pool forks, so workers start warm)
from medclip.data.manifest import MANIFEST_COLUMNS, write_manifest
from medclip.data.reports import (
    ReportSections,
    identifier_tokens,
    parse_sections,
    scrub_identifiers,
    scrub_with_hashes,
    sections_from_fields,
    staff_name_tokens,
)
from medclip.data.splits import SPLITS, assign_splits, patients_in_several_splits, validate_fractions
from medclip.deid import coarse_age, coarse_sex, get_salt, hash_identifier, person_names, warn_if_default_salt
from medclip.io.dicom import inferred_run_ids

log = logging.getLogger(__name__)

from medclip.data.shards import Shard  # noqa: E402  (array-job parts; see index_export)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
#: Files that are never images: ignored silently (not counted as unreadable).
IGNORED_NAMES = {"dicomdir", "thumbs.db", ".ds_store"}
IGNORED_SUFFIXES = (
    ".txt",
    ".csv",
    ".json",
    ".md",
    ".xml",
    ".html",
    ".pdf",
    ".parquet",
    ".yaml",
    ".yml",
    ".log",
    ".py",
    ".zip",
    ".tar",
    ".gz",
    ".bval",
    ".bvec",
)
VOLUME_MODALITIES = {"CT", "MR", "PT", "NM"}
SR_MODALITIES = {"SR", "DOC"}
STATE_VERSION = 3  # 2: staff names among the scrubbing hashes; 3: inferred series of blank-UID slices


@dataclass
class IndexResult:
    """What an indexing run produced and counted."""

    manifest: pd.DataFrame
    manifest_path: Path
    files_seen: int = 0
    files_read: int = 0
    files_reused: int = 0
    skipped: Counter = field(default_factory=Counter)
    reports_linked: int = 0
    reports_unlinked: int = 0
    leaked_patients: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    part_path: Path | None = None  # an array task's part (no manifest yet: `medclip index --merge` makes it)

    def summary(self) -> str:
        """A human-readable summary (no PHI)."""
        df = self.manifest
        lines = [
            f"manifest: {self.manifest_path}",
            f"files: {self.files_seen} seen, {self.files_read} read, {self.files_reused} unchanged (reused)",
            f"rows: {len(df)} ({int((df['kind'] == 'image').sum()) if len(df) else 0} images, "
            f"{int((df['kind'] == 'volume').sum()) if len(df) else 0} volumes) from "
            f"{df['patient_id'].nunique() if len(df) else 0} patients, {df['study_id'].nunique() if len(df) else 0} studies",
        ]
        if len(df):
            counts = df.groupby("split")["patient_id"].nunique().to_dict()
            rows = df["split"].value_counts().to_dict()
            lines.append(
                "splits: " + ", ".join(f"{s} {rows.get(s, 0)} rows / {counts.get(s, 0)} patients" for s in SPLITS)
            )
            lines.append(f"modalities: { {k: int(v) for k, v in df['modality'].value_counts().items()} }")
            with_report = int((df["report_text"].str.len() > 0).sum())
            lines.append(
                f"reports: {with_report}/{len(df)} rows have a report; "
                f"{self.reports_linked} report rows linked, {self.reports_unlinked} unlinked"
            )
        if self.skipped:
            lines.append(
                f"skipped {sum(self.skipped.values())} files: "
                + ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common())
            )
        lines.append(
            "patients in several splits: " + (", ".join(self.leaked_patients) if self.leaked_patients else "none")
        )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- walking


def classify_file(path: Path) -> str | None:
    """'dicom', 'nifti', 'raster', or None (not an image: ignored) for one file."""
    name = path.name.lower()
    if name in IGNORED_NAMES or name.startswith("."):
        return None
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(tuple(s + ".gz" for s in DICOM_SUFFIXES)):  # gzip-compressed DICOM (.dcm.gz)
        return "dicom"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(IGNORED_SUFFIXES):
        return None
    return "dicom"  # extension-less or unknown: PACS exports often name DICOM files IM0001, 1.2.840...


def walk_export(root: Path) -> Iterator[Path]:
    """All candidate image files under ``root`` in a stable order (hidden folders skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if classify_file(p) is not None:
                yield p


# ------------------------------------------------------------------------------------------- per file


def _sr_text(ds) -> tuple[str, dict[str, str]]:
    """Text of a DICOM Structured Report, and any sections found by concept name."""
    sections: dict[str, list[str]] = {}
    texts: list[str] = []

    def walk(items, heading: str = "") -> None:
        for item in items or []:
            name = ""
            if "ConceptNameCodeSequence" in item and len(item.ConceptNameCodeSequence):
                name = str(item.ConceptNameCodeSequence[0].get("CodeMeaning", "") or "")
            vt = str(item.get("ValueType", "") or "")
            if vt == "TEXT" and "TextValue" in item:
                value = str(item.TextValue)
                texts.append(value)
                key = (name or heading).lower()
                sections.setdefault(key, []).append(value)
            if "ContentSequence" in item:
                walk(item.ContentSequence, name or heading)

    walk(ds.get("ContentSequence", []))
    mapped: dict[str, str] = {}
    for key, values in sections.items():
        for canon in ("findings", "impression", "indication", "history", "conclusion"):
            if canon in key:
                target = {"history": "indication", "conclusion": "impression"}.get(canon, canon)
                mapped[target] = (mapped.get(target, "") + " " + " ".join(values)).strip()
    return "\n".join(texts), mapped


@medclip.io.phi_safe
def read_file_record(args: tuple[str, str, str, bool]) -> dict:
    """Header record of one file (runs in a worker). Never raises: failures come back as ``status``.

    Reader warnings (which name the file and header values) are sanitised by :func:`medclip.io.phi_safe`.
    """
    path_str, kind, salt, verify = args
    path = Path(path_str)
    rec: dict = {"path": path_str, "kind_hint": kind, "status": "ok"}
    try:
        st = path.stat()
        rec["file_size"], rec["mtime"] = int(st.st_size), float(st.st_mtime)
        if st.st_size == 0:
            rec["status"] = "empty file"
            return rec
        if kind == "dicom":
            _dicom_record(path, salt, verify, rec)
        elif kind == "nifti":
            _nifti_record(path, verify, rec)
        else:
            _raster_record(path, verify, rec)
    except (ImportError, NameError):  # a broken installation, not a bad file: stop loudly
        raise
    except Exception as exc:  # one bad file must never stop the run
        rec["status"] = _reason(exc)
    return rec


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def _dicom_record(path: Path, salt: str, verify: bool, rec: dict) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medclip.io import ImageReadError
    from medclip.io.dicom import dicom_source

    try:
        ds = pydicom.dcmread(dicom_source(path), defer_size="2 KB")  # a .dcm.gz is inflated in memory
    except InvalidDicomError:
        rec["status"] = "not DICOM"
        return
    except ImageReadError as exc:  # a corrupt or oversized .dcm.gz
        rec["status"] = exc.reason
        return
    except Exception as exc:
        rec["status"] = f"unreadable DICOM header ({type(exc).__name__})"
        return
    modality = str(ds.get("Modality", "") or "").upper()
    raw_ids = {
        "PatientID": str(ds.get("PatientID", "") or ""),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "") or ""),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "") or ""),
        "AccessionNumber": str(ds.get("AccessionNumber", "") or ""),
    }
    name = str(ds.get("PatientName", "") or "")
    birth = str(ds.get("PatientBirthDate", "") or "")
    # the patient's own names and IDs, and every person name in the header (referring, performing and
    # reading physicians, operators, observers): all are scrubbed from the study's report text
    phi = identifier_tokens(
        [
            name,
            raw_ids["PatientID"],
            raw_ids["AccessionNumber"],
            birth,
            str(ds.get("OtherPatientNames", "") or ""),
            str(ds.get("OtherPatientIDs", "") or ""),
        ]
    ) | staff_name_tokens(person_names(ds))
    rec["phi_hashes"] = sorted(hash_identifier(t, salt) for t in phi)
    rec["patient_key"] = hash_identifier(raw_ids["PatientID"] or (name + birth), salt)
    rec["study_key"] = hash_identifier(raw_ids["StudyInstanceUID"], salt)
    rec["series_key"] = hash_identifier(raw_ids["SeriesInstanceUID"], salt)
    rec["image_key"] = hash_identifier(raw_ids["SOPInstanceUID"], salt)
    rec["accession_key"] = hash_identifier(raw_ids["AccessionNumber"], salt)
    rec["modality"] = modality
    rec["sex"] = coarse_sex(ds.get("PatientSex", ""))
    age = ds.get("PatientAge", "")
    if not age and birth and str(ds.get("StudyDate", "") or ""):
        try:
            age = str(int(str(ds.StudyDate)[:4]) - int(birth[:4]))
        except ValueError:
            age = ""
    rec["age_group"] = coarse_age(age)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    is_sr = modality in SR_MODALITIES or sop_class.startswith("1.2.840.10008.5.1.4.1.1.88")
    if is_sr:
        text, sections = _sr_text(ds)
        rec["kind_hint"] = "sr"
        rec["sr_text"] = text
        rec["sr_sections"] = json.dumps(sections)
        if not text:
            rec["status"] = "structured report without text"
        return
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        rec["status"] = "no pixel data"
        return
    from medclip.io.dicom_header import _text as header_text  # the three fields, as safe_metadata reads them

    # (not safe_metadata itself: it hashes UIDs and reads windows and spacing the index does not keep,
    # and took 60% of a header-only run)
    rec["view_position"] = header_text(ds, "ViewPosition")
    rec["body_part"] = header_text(ds, "BodyPartExamined")
    rec["photometric"] = header_text(ds, "PhotometricInterpretation")
    rec["manufacturer"] = header_text(ds, "Manufacturer")  # the vendor (non-PHI; the institution is never kept)
    rec["rows"] = int(ds.get("Rows", 0) or 0)
    rec["columns"] = int(ds.get("Columns", 0) or 0)
    rec["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
    rec["has_position"] = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    if not raw_ids["SeriesInstanceUID"] and rec["has_position"] and modality in VOLUME_MODALITIES:
        from medclip.io.dicom import inferred_series_key, slice_position

        key = inferred_series_key(ds, path, salt)
        if key:  # an anonymised slice: grouped with its series by geometry (see _build_rows)
            rec["series_key"], rec["series_inferred"], rec["slice_position"] = key, True, slice_position(ds)
    if verify:
        from medclip.io import load_image

        load_image(path, window=None)


def _nifti_record(path: Path, verify: bool, rec: dict) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape  # type: ignore[attr-defined]  # nib.load is typed as FileBasedImage; NIfTI images have .shape
    rec["modality"] = ""
    rec["rows"], rec["columns"] = int(shape[1]) if len(shape) > 1 else 0, int(shape[0])
    rec["frames"] = int(shape[2]) if len(shape) > 2 else 1
    rec["kind_hint"] = "nifti"
    if verify:
        from medclip.io import load_image

        # 4D (fMRI, DWI): check the first volume, the one the cache stores
        load_image(path, window=None, frame=0 if len(shape) > 3 and shape[3] > 1 else None)


def _raster_record(path: Path, verify: bool, rec: dict) -> None:
    from PIL import Image

    with Image.open(path) as im:
        rec["columns"], rec["rows"] = im.size
        rec["frames"] = 1
        if verify:
            im.load()
    rec["modality"] = ""


# ------------------------------------------------------------------------------------------- reports

#: Column names recognised in a reports table, by role (first match wins, case-insensitive).
REPORT_KEY_COLUMNS = {
    "accession": ("accession_number", "accessionnumber", "accession", "acc"),
    "study_uid": ("study_instance_uid", "studyinstanceuid", "study_uid", "studyuid"),
    "path": ("path", "file", "filepath", "file_path", "image_path", "filename", "file_name", "image"),
}
REPORT_TEXT_COLUMNS = {
    "text": ("report", "report_text", "text", "reporttext", "full_text"),
    "findings": ("findings", "finding_text"),
    "impression": ("impression", "impressions", "conclusion"),
    "indication": ("indication", "history", "clinical_history", "clinical_notes", "reason"),
    "comparison": ("comparison",),
}
REPORT_PATIENT_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "mrn")
REPORT_STUDY_COLUMNS = ("study_id", "studyid", "study")


def _find_col(columns: Iterable[str], names: Iterable[str]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def load_reports(
    path: Path, key_column: str | None = None, link_on: str | None = None
) -> tuple[pd.DataFrame, str, str]:
    """Read a reports CSV/Parquet; return it, its key column and what the key matches ('accession'|'study_uid'|'path')."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: reports file not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read reports table ({exc})") from exc
    if link_on is not None and link_on not in REPORT_KEY_COLUMNS:
        raise ValueError(f"link_on must be one of {sorted(REPORT_KEY_COLUMNS)}, got {link_on!r}")
    if key_column is not None:
        if key_column not in df.columns:
            raise ValueError(f"{path}: no column {key_column!r} (columns: {list(df.columns)})")
        if link_on is None:
            link_on = next((role for role, names in REPORT_KEY_COLUMNS.items() if key_column.lower() in names), None)
            if link_on is None:
                raise ValueError(
                    f"{path}: say what column {key_column!r} holds with --link-on accession|study_uid|path"
                )
        return df, key_column, link_on
    roles = [link_on] if link_on else list(REPORT_KEY_COLUMNS)
    for role in roles:
        col = _find_col(df.columns, REPORT_KEY_COLUMNS[role])
        if col is not None:
            return df, col, role
    raise ValueError(
        f"{path}: no column to link reports to images; expected one of "
        f"{sorted(n for v in REPORT_KEY_COLUMNS.values() for n in v)} or name it with --report-key"
    )


def report_sections_from_row(row: pd.Series | dict) -> ReportSections:
    """Sections of one reports-table row (a Series or a dict), whatever its columns are called."""
    columns = row.index if isinstance(row, pd.Series) else list(row)
    return _sections_of(row, {role: _find_col(columns, names) for role, names in REPORT_TEXT_COLUMNS.items()})


def _sections_of(row: pd.Series | dict, cols: dict[str, str | None]) -> ReportSections:
    """Sections of one row, given which column plays which role (found once per table)."""
    get = lambda role: row[cols[role]] if cols[role] is not None else ""  # noqa: E731
    if cols["findings"] is None and cols["impression"] is None:
        s = parse_sections(get("text"))
        s.indication = s.indication or str(get("indication") or "").strip()
        if s.indication and s.text and s.indication not in s.text:
            s.text = f"INDICATION: {s.indication}\n{s.text}"
        return s
    return sections_from_fields(
        findings=get("findings"),
        impression=get("impression"),
        indication=get("indication"),
        comparison=get("comparison"),
        text=get("text"),
    )


# ------------------------------------------------------------------------------------------- indexing


def _state_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name.removesuffix(".parquet") + ".files.parquet")


def skipped_path(manifest_path: Path) -> Path:
    """The sidecar CSV that lists files the indexer could not use, with the reason."""
    return manifest_path.with_name(manifest_path.name.removesuffix(".parquet") + ".skipped.csv")


def part_path(manifest_path: Path, shard) -> Path:
    """The per-file records an array task writes (``<manifest>.part-00003-of-00008.files.parquet``)."""
    return manifest_path.with_name(manifest_path.name.removesuffix(".parquet") + f".{shard.tag}.files.parquet")


def part_paths(manifest_path: Path) -> list[Path]:
    """The array tasks' part files next to a manifest, in part order."""
    stem = manifest_path.name.removesuffix(".parquet")
    return sorted(manifest_path.parent.glob(f"{stem}.part-*-of-*.files.parquet"))


def _load_state(manifest_path: Path, salt_check: str, root: Path) -> dict[str, dict]:
    return _load_state_file(_state_path(manifest_path), salt_check, root)


def _state_meta(p: Path) -> dict:
    import pyarrow.parquet as pq

    return json.loads((pq.read_schema(p).metadata or {}).get(b"medclip", b"{}"))


def _load_state_file(p: Path, salt_check: str, root: Path) -> dict[str, dict]:
    """Per-file records by relative path from a state file ({} when absent or made with other settings)."""
    if not p.exists():
        return {}
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        meta = json.loads((table.schema.metadata or {}).get(b"medclip", b"{}"))
        if (
            meta.get("salt_check") != salt_check
            or meta.get("version") != STATE_VERSION
            or meta.get("root") != str(root)
        ):
            log.warning("previous index state was made with another salt, root or version: re-reading everything")
            return {}
        df = table.to_pandas()
    except Exception as exc:
        log.warning("cannot read previous index state %s (%s): re-reading everything", p, exc)
        return {}
    out = {}
    for rec in df.to_dict("records"):
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and np.isnan(v))}
        if "phi_hashes" in rec and rec["phi_hashes"] is not None:
            rec["phi_hashes"] = list(rec["phi_hashes"])
        out[rec["path"]] = rec
    return out


def _save_state(manifest_path: Path, records: Iterable[dict], salt_check: str, root: Path) -> None:
    _save_state_file(_state_path(manifest_path), records, salt_check, root)


def _save_state_file(p: Path, records: Iterable[dict], salt_check: str, root: Path, extra: dict | None = None) -> None:
    """Write per-file records all or nothing (SR text is dropped: the state keeps only structure)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medclip.fsutil import atomic_write

    df = pd.DataFrame(list(records))
    if "sr_text" in df:  # report text lives in the manifest, scrubbed; the state keeps only structure
        df = df.drop(columns=[c for c in ("sr_text", "sr_sections") if c in df])
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {
            b"medclip": json.dumps(
                {"salt_check": salt_check, "version": STATE_VERSION, "root": str(root), **(extra or {})}
            ).encode()
        }
    )
    with atomic_write(p) as tmp:
        pq.write_table(table, tmp)


def index_export(
    export_dir: str | Path,
    output: str | Path,
    *,
    reports: str | Path | None = None,
    report_key: str | None = None,
    link_on: str | None = None,
    salt: str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int | None = None,
    verify_pixels: bool = True,
    incremental: bool = True,
    progress: bool = True,
    default_salt_ok: bool = False,
    shard: Shard | None = None,
    merge: bool = False,
    checkpoint_every: int = 2000,
) -> IndexResult:
    """Index a PACS export folder into a de-identified, patient-split manifest (see module docstring).

    ``salt`` (else ``$MEDCLIP_SALT``) keys every hashed identifier, DICOM or not. Without either, the
    public default salt is used and a warning says so, unless ``default_salt_ok`` (demo data, quick start).

    Array jobs: with ``shard`` (task i of N, :mod:`medclip.data.shards`) the run reads only its block of
    the export's files and writes ``<manifest>.part-i-of-N.files.parquet`` (no manifest); ``merge=True``
    then builds the manifest from all N parts, exactly as one process would have (series are assembled,
    reports linked and splits drawn only here, over every file). Per-file records are saved every
    ``checkpoint_every`` files (atomically), so a killed run resumes where it stopped.
    """
    root = Path(export_dir).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{export_dir}: export folder not found")
    output = Path(output)
    if output.suffix != ".parquet":
        output = output / "manifest.parquet" if output.is_dir() or not output.suffix else output.with_suffix(".parquet")
    fractions = validate_fractions(fractions)
    if not default_salt_ok:
        warn_if_default_salt(salt)
    salt = get_salt(salt)
    salt_check = hash_identifier("medclip-salt-check", salt)
    state = _load_state(output, salt_check, root) if incremental else {}
    shard = shard or Shard()
    if merge:
        records, files_seen, files_read, reused, parts = _merge_parts(output, salt_check, root, salt, verify_pixels)
    else:
        state_file = _state_path(output) if shard.is_whole else part_path(output, shard)
        if not shard.is_whole and incremental:  # an interrupted task resumes from its own part
            state.update(_load_state_file(state_file, salt_check, root))
        records, files_seen, files_read, reused = _read_records(
            root, state, shard, salt, verify_pixels, workers, progress, state_file, salt_check, checkpoint_every
        )
        if not shard.is_whole:
            _save_state_file(
                state_file,
                records,
                salt_check,
                root,
                extra={
                    "shard": shard.index,
                    "num_shards": shard.count,
                    "files_seen": files_seen,
                    "files_read": files_read,
                    "files_reused": reused,
                },
            )
            res = IndexResult(
                manifest=pd.DataFrame(columns=list(MANIFEST_COLUMNS)),
                manifest_path=output,
                files_seen=files_seen,
                files_read=files_read,
                files_reused=reused,
                skipped=Counter(r["status"] for r in records if r.get("status") != "ok"),
            )
            res.part_path = state_file
            return res

    result = IndexResult(
        manifest=pd.DataFrame(), manifest_path=output, files_seen=files_seen, files_read=files_read, files_reused=reused
    )
    ok = [r for r in records if r.get("status") == "ok"]
    bad = [r for r in records if r.get("status") != "ok"]
    result.skipped = Counter(r["status"] for r in bad)

    rows, sr_reports = _build_rows(ok, root, salt)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    for col in ("report_indication", "report_findings", "report_impression", "report_text"):
        df[col] = ""

    phi_by_study: dict[str, set[str]] = {}
    for r in ok:
        if r.get("study_key"):
            phi_by_study.setdefault(r["study_key"], set()).update(r.get("phi_hashes") or [])

    # reports: from DICOM SR in the export, then from the reports table (which wins where both exist)
    by_study = _key_index(df, "study_uid")
    for study_key, sections in sr_reports.items():
        _attach_report(df, by_study.get(study_key, []), sections, phi_by_study.get(study_key, set()), salt)
    if reports is not None:
        table, key_col, role = load_reports(Path(reports), report_key, link_on)
        linked = _link_reports(df, table, key_col, role, phi_by_study, salt, progress)
        result.reports_linked = linked
        result.reports_unlinked = len(table) - linked

    if len(df):
        df["split"] = assign_splits(df["patient_id"], fractions, seed)
    else:
        df["split"] = pd.Series(dtype=str)
    result.leaked_patients = patients_in_several_splits(df)
    df = df[[c for c in MANIFEST_COLUMNS if c in df.columns]].reset_index(drop=True)
    for col in ("rows", "columns", "frames", "file_size"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
    df["mtime"] = pd.to_numeric(df["mtime"], errors="coerce").astype("float64")

    _warn_phi_in_paths(df, phi_by_study, salt, result)
    write_manifest(
        df,
        output,
        root=root,
        extra={
            "salt_check": salt_check,
            "fractions": list(fractions),
            "seed": seed,
            "created_by": "medclip index",
        },
    )
    df = df.copy()
    df["path"] = [str(root / p) if not Path(p).is_absolute() else p for p in df["path"]]
    _save_state(output, records, salt_check, root)
    _write_skipped(output, bad)
    if merge:
        for p in parts:  # merged into the manifest and its state: the parts are done
            p.unlink(missing_ok=True)
    result.manifest = df
    return result


def _read_records(
    root: Path,
    state: dict[str, dict],
    shard: Shard,
    salt: str,
    verify_pixels: bool,
    workers: int | None,
    progress: bool,
    state_file: Path,
    salt_check: str,
    checkpoint_every: int,
) -> tuple[list[dict], int, int, int]:
    """Per-file records of this shard's files: unchanged ones from ``state``, the rest read in workers.

    Every ``checkpoint_every`` files read, the records so far (with the older state) are written to
    ``state_file``, so a killed run re-reads only what it had not finished.
    Returns (records, files seen, files read, files reused).
    """
    files = list(tqdm(walk_export(root), desc="scanning", unit=" files", disable=not progress, leave=False))
    files = shard.block(files)
    own = {p.relative_to(root).as_posix() for p in files}
    state = {rel: rec for rel, rec in state.items() if rel in own}  # a part holds only its own files
    records: list[dict] = []
    todo: list[tuple[str, str, str, bool]] = []
    reused = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        unusable = _unusable_path(p, rel)
        if unusable is not None:  # skipped, counted and listed, never fatal
            records.append(unusable)
            continue
        st = p.stat()
        old = state.get(rel)
        if (
            old is not None
            and old.get("file_size") == st.st_size
            and old.get("mtime") == float(st.st_mtime)
            and old.get("kind_hint") != "sr"
        ):
            records.append(old)
            reused += 1
        else:
            todo.append((str(p), classify_file(p) or "dicom", salt, verify_pixels))

    def checkpoint() -> None:
        _save_state_file(state_file, {**state, **{r["path"]: r for r in records}}.values(), salt_check, root)

    done = 0

    def add(rec: dict) -> None:
        nonlocal done
        if Path(rec["path"]).is_absolute():
            rec["path"] = Path(rec["path"]).relative_to(root).as_posix()
        records.append(rec)
        bar.update()
        done += 1  # (a disabled tqdm bar does not count)
        if checkpoint_every and done % checkpoint_every == 0 and done < len(todo):
            checkpoint()

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(todo), desc="indexing", unit=" files", disable=not progress)
    try:
        if n_workers > 1 and len(todo) > 16:
            with ProcessPoolExecutor(n_workers) as pool:
                chunk = max(1, min(64, len(todo) // (n_workers * 8) or 1))
                for rec in pool.map(read_file_record, todo, chunksize=chunk):
                    add(rec)
        else:
            for args in todo:
                add(read_file_record(args))
    except BaseException:
        # Ctrl-C, SIGTERM at a SLURM time limit (medclip index turns it into KeyboardInterrupt), a broken worker
        # pool: keep what was read. A SIGKILL leaves the last periodic checkpoint.
        if done:
            checkpoint()
        raise
    finally:
        bar.close()
    return records, len(files), len(todo), reused


def _merge_parts(
    output: Path, salt_check: str, root: Path, salt: str, verify_pixels: bool
) -> tuple[list[dict], int, int, int, list[Path]]:
    """All array tasks' records, checked complete and made with this salt and export root.

    Structured reports are read again here (their text is never stored in a part).
    Returns (records, files seen, files read, files reused, part files).
    """
    from medclip.data.shards import missing_parts, parse_part_tag

    parts = part_paths(output)
    if not parts:
        raise FileNotFoundError(
            f"{output}: no index parts to merge (run `medclip index --num-shards N --shard-index i` for every i first)"
        )
    shards = [parse_part_tag(p.name) for p in parts]
    count, missing = missing_parts([s for s in shards if s is not None])
    if missing:
        raise ValueError(
            f"{output}: {len(missing)} of {count} index parts are missing (shard index "
            f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}): run them, then merge"
        )
    records: list[dict] = []
    seen = read = reused = 0
    for p in parts:
        meta = _state_meta(p)
        if (
            meta.get("salt_check") != salt_check
            or meta.get("root") != str(root)
            or meta.get("version") != STATE_VERSION
        ):
            raise ValueError(f"{p.name}: made with another salt, export folder or medclip version than this merge")
        seen += int(meta.get("files_seen", 0))
        read += int(meta.get("files_read", 0))
        reused += int(meta.get("files_reused", 0))
        for rel, rec in _load_state_file(p, salt_check, root).items():
            if rec.get("kind_hint") == "sr":
                rec = read_file_record((str(root / rel), "dicom", salt, verify_pixels))
                rec["path"] = rel
            records.append(rec)
    return records, seen, read, reused, parts


def _link_reports(
    df: pd.DataFrame,
    table: pd.DataFrame,
    key_col: str,
    role: str,
    phi_by_study: dict[str, set[str]],
    salt: str,
    progress: bool,
) -> int:
    """Attach each reports-table row to the rows it names (column-wise: no per-row pandas indexing).

    Rows are matched as :func:`_lookup` says; each report's sections are scrubbed of the identifiers of
    every study it links to; for ``path`` links, patient/study ids come from the table when it has them.
    A later table row wins over an earlier one for the same image. Returns the number of rows linked.
    """
    if df.empty or table.empty:
        return 0
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    keys = _key_index(df, role)
    text_cols = {r: _find_col(table.columns, names) for r, names in REPORT_TEXT_COLUMNS.items()}
    out = {c: df[c].tolist() for c in ("report_indication", "report_findings", "report_impression", "report_text")}
    study_ids, patient_ids, series_ids = df["study_id"].tolist(), df["patient_id"].tolist(), df["series_id"].tolist()
    pcol = _find_col(table.columns, REPORT_PATIENT_COLUMNS) if role == "path" else None
    scol = _find_col(table.columns, REPORT_STUDY_COLUMNS) if role == "path" else None
    linked = 0
    rows = table.to_dict("records")
    for row in tqdm(rows, total=len(rows), desc="linking reports", disable=not progress, leave=False):
        raw_key = str(row[key_col]).strip()
        if not raw_key:
            continue
        match = _lookup(keys, raw_key, role, salt)
        if not match:
            continue
        linked += 1
        phi = set().union(*(phi_by_study.get(study_ids[i], set()) for i in set(match)))
        s = _sections_of(row, text_cols)
        for column, text in (
            ("report_indication", s.indication),
            ("report_findings", s.findings),
            ("report_impression", s.impression),
            ("report_text", s.text),
        ):
            clean = scrub_identifiers(scrub_with_hashes(text or "", phi, salt))
            for i in match:
                out[column][i] = clean
        if pcol and str(row[pcol]).strip():
            for i in match:
                patient_ids[i] = hash_identifier(str(row[pcol]).strip(), salt)
        if scol and str(row[scol]).strip():
            study = hash_identifier(f"{row[pcol] if pcol else ''}/{row[scol]}".strip(), salt)
            for i in match:
                study_ids[i] = series_ids[i] = study
    for column, values in out.items():
        df[column] = values
    df["study_id"], df["patient_id"], df["series_id"] = study_ids, patient_ids, series_ids
    return linked


def printable_path(rel: str) -> str:
    """A path as text that can be stored and shown: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unusable_path(p: Path, rel: str) -> dict | None:
    """A 'skipped' record for a file the manifest cannot hold or that vanished; None when the file is usable.

    A name that is not valid UTF-8 (bytes from another system's encoding) cannot be stored in Parquet
    as a path that still opens the file: the file is skipped, listed under an escaped name, and the
    run goes on.
    """
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return {
            "path": printable_path(rel),
            "kind_hint": classify_file(p) or "dicom",
            "status": "file name is not valid UTF-8: rename the file (e.g. with convmv) to index it",
        }
    try:
        p.stat()
    except OSError as exc:
        return {
            "path": rel,
            "kind_hint": classify_file(p) or "dicom",
            "status": f"cannot open ({exc.strerror or type(exc).__name__})",
        }
    return None


def _build_rows(ok: list[dict], root: Path, salt: str) -> tuple[list[dict], dict[str, ReportSections]]:
    """Manifest rows (images and assembled volumes) and SR reports by study, from per-file records."""
    rows: list[dict] = []
    sr_reports: dict[str, ReportSections] = {}
    series: dict[str, list[dict]] = {}
    for r in ok:
        hint = r.get("kind_hint")
        if hint == "sr":
            sections = json.loads(r.get("sr_sections") or "{}")
            s = sections_from_fields(
                findings=sections.get("findings", ""),
                impression=sections.get("impression", ""),
                indication=sections.get("indication", ""),
                text=r.get("sr_text", ""),
            )
            if r.get("study_key"):
                sr_reports[r["study_key"]] = s
            continue
        if hint == "dicom" and r.get("modality") in VOLUME_MODALITIES and r.get("has_position") and r.get("series_key"):
            series.setdefault(r["series_key"], []).append(r)
            continue
        rows.append(_image_row(r, root, salt))
    for key, members in series.items():
        if members[0].get("series_inferred"):
            # blank Series Instance UID (anonymised): the key groups by frame of reference, orientation,
            # spacing and size; position continuity then splits it into volumes
            positions = [float(m.get("slice_position") or 0.0) for m in members]
            for run_id, indices in inferred_run_ids(key, positions, salt):
                rows.append(_series_row([members[i] for i in indices], run_id, root, salt, inferred=True))
        else:
            rows.append(_series_row(members, key, root, salt))
    return rows, sr_reports


def _series_row(members: list[dict], key: str, root: Path, salt: str, inferred: bool = False) -> dict:
    """One manifest row for the slices of one series: a volume, or an image when there is one file."""
    if len(members) == 1:
        return _image_row(members[0], root, salt, kind="volume" if members[0].get("frames", 1) > 1 else "image")
    members = sorted(members, key=lambda m: m["path"])
    first = members[0]
    row = _image_row(first, root, salt, kind="volume")
    row["image_id"] = key
    if inferred:  # no study/series UIDs to hash: ids follow the inferred group
        row["series_id"] = key
        row["study_id"] = first.get("study_key") or key
        row["patient_id"] = first.get("patient_key") or row["study_id"]
    row["path"] = str(Path(first["path"]).parent.as_posix())
    row["files"] = [m["path"] for m in members]
    row["frames"] = len(members)
    row["file_size"] = int(sum(m.get("file_size", 0) for m in members))
    row["mtime"] = float(max(m.get("mtime", 0.0) for m in members))
    return row


def _image_row(r: dict, root: Path, salt: str, kind: str | None = None) -> dict:
    rel = r["path"]
    hint = r.get("kind_hint")
    if hint == "dicom":
        patient, study, series, image = (
            r.get("patient_key"),
            r.get("study_key"),
            r.get("series_key"),
            r.get("image_key"),
        )
        if kind is None:
            kind = "volume" if r.get("frames", 1) > 1 and r.get("modality") in VOLUME_MODALITIES else "image"
    else:
        # non-DICOM: identity from the folder layout <patient>/<study>/.../file, until a reports row says otherwise
        parts = Path(rel).parts
        patient = hash_identifier(parts[0] if len(parts) > 1 else rel, salt)
        study = hash_identifier("/".join(parts[:-1]) or rel, salt)
        series = study
        image = hash_identifier(rel, salt)
        if kind is None:
            kind = "volume" if hint == "nifti" and r.get("frames", 1) > 1 else "image"
    image = image or hash_identifier(rel, salt)  # e.g. a blank SOP Instance UID
    if not patient:
        patient = study or image
    return {
        "image_id": image,
        "path": rel,
        "kind": kind,
        "files": None,
        "patient_id": patient,
        "study_id": study or image,
        "series_id": series or study or image,
        "modality": r.get("modality", "") or ("MR/CT" if hint == "nifti" else ""),
        "view_position": r.get("view_position", "") or "",
        "body_part": r.get("body_part", "") or "",
        "photometric": r.get("photometric", "") or "",
        "manufacturer": r.get("manufacturer", "") or "",
        "rows": r.get("rows", 0),
        "columns": r.get("columns", 0),
        "frames": r.get("frames", 1),
        "sex": r.get("sex", "") or "",
        "age_group": r.get("age_group", "") or "",
        "file_size": r.get("file_size", 0),
        "mtime": r.get("mtime", 0.0),
        "_accession": r.get("accession_key", ""),
    }


def _key_index(df: pd.DataFrame, role: str) -> dict[str, list[int]]:
    """Row indices by what a report key can match: hashed accession or study UID, or every path suffix.

    For ``path``, a row is found by its whole relative path and by each trailing part of it
    ("study/img.png", "img.png"), so a reports table may name files relative to any folder.
    """
    index: dict[str, list[int]] = {}
    if df.empty:
        return index
    if role in ("accession", "study_uid"):
        column = df["_accession"].fillna("") if role == "accession" else df["study_id"]
        for i, key in zip(df.index, column):
            if key:
                index.setdefault(key, []).append(i)
        return index
    for i, path in zip(df.index, df["path"]):
        parts = Path(path).parts
        index.setdefault(path, []).append(i)
        for k in range(1, len(parts)):
            index.setdefault("\0" + "/".join(parts[k:]), []).append(i)
    return index


def _lookup(index: dict[str, list[int]], raw_key: str, role: str, salt: str) -> list[int]:
    """Rows a report key links to: the exact path first, else every path ending in it."""
    if role in ("accession", "study_uid"):
        return index.get(hash_identifier(raw_key, salt), [])
    key = raw_key.replace("\\", "/").lstrip("./")
    return index.get(key) or index.get("\0" + key, [])


def _attach_report(df: pd.DataFrame, rows: list[int], s: ReportSections, phi: set[str], salt: str) -> None:
    """Write a report's sections into the given rows, scrubbed of the patient's own and pattern-like identifiers."""
    if not rows:
        return
    for column, text in (
        ("report_indication", s.indication),
        ("report_findings", s.findings),
        ("report_impression", s.impression),
        ("report_text", s.text),
    ):
        df.loc[rows, column] = scrub_identifiers(scrub_with_hashes(text or "", phi, salt))


def _warn_phi_in_paths(df: pd.DataFrame, phi_by_study: dict[str, set[str]], salt: str, result: IndexResult) -> None:
    if df.empty:
        return
    all_phi = set().union(*phi_by_study.values()) if phi_by_study else set()
    if not all_phi:
        return
    n = 0
    for p in df["path"]:
        for part in re.split(r"[/_.\s]+", p):
            if part and hash_identifier(part.lower(), salt) in all_phi:
                n += 1
                break
    if n:
        result.warnings.append(
            f"{n} file paths contain a patient name or ID: the manifest's 'path' column is then not de-identified; "
            "share the cache (which holds no paths), not the manifest"
        )


def _write_skipped(manifest_path: Path, bad: list[dict]) -> None:
    from medclip.fsutil import atomic_write

    with atomic_write(skipped_path(manifest_path)) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        for r in sorted(bad, key=lambda r: r["path"]):
            w.writerow([r["path"], r["status"]])
