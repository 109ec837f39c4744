"""The manifest: one Parquet row per image or assembled volume, de-identified, with its split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns every manifest has, in order. Labels (``label.<concept>``) are added by ``medclip label``.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "kind",
    "files",
    "patient_id",
    "study_id",
    "series_id",
    "modality",
    "view_position",
    "body_part",
    "photometric",
    "manufacturer",
    "rows",
    "columns",
    "frames",
    "sex",
    "age_group",
    "report_indication",
    "report_findings",
    "report_impression",
    "report_text",
    "split",
    "file_size",
    "mtime",
)
LABEL_PREFIX = "label."
_META_KEY = b"medclip"


class ManifestError(ValueError):
    """A manifest that cannot be read or lacks required columns."""


def label_columns(df: pd.DataFrame) -> list[str]:
    """The ``label.<concept>`` columns of a manifest, in column order."""
    return [c for c in df.columns if c.startswith(LABEL_PREFIX)]


def write_manifest(
    df: pd.DataFrame, path: str | Path, root: str | Path | None = None, extra: dict | None = None
) -> str | Path:
    """Write atomically as Parquet; ``path`` values are stored relative to ``root`` (kept in the file metadata).

    ``path`` may be an fsspec URL (``s3://bucket/manifest.parquet``): the file is uploaded once written.
    """
    from medclip.data import storage

    path = storage.as_location(path)
    df = df.copy()
    meta = dict(extra or {})
    if root is not None:
        root = Path(root).resolve()
        meta["root"] = str(root)
        df["path"] = [_relative(p, root) for p in df["path"]]
        if "files" in df:
            df["files"] = [None if f is None else [_relative(x, root) for x in f] for f in df["files"]]
    table = pa.Table.from_pandas(df, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[_META_KEY] = json.dumps(meta).encode()
    table = table.replace_schema_metadata(schema_meta)
    if storage.is_url(path):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(path, buffer.getvalue())
        return path
    from medclip.fsutil import atomic_write

    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _relative(p: object, root: Path) -> str:
    p = Path(str(p))
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def manifest_metadata(path: str | Path) -> dict:
    """The medclip metadata stored in a manifest (export root, salt check, index options); path or URL."""
    from medclip.data import storage

    try:
        if storage.is_url(path):
            with storage.open_file(path) as handle:
                schema = pq.read_schema(handle)
        else:
            schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for non-Parquet input
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def read_manifest(path: str | Path, *, resolve_paths: bool = True, root: str | Path | None = None) -> pd.DataFrame:
    """Read a manifest (a path or an fsspec URL); relative ``path``/``files`` become absolute under the
    export root (or ``root``)."""
    from medclip.data import storage

    path = storage.as_location(path)
    if not storage.exists(path):
        raise ManifestError(f"{path}: manifest not found")
    meta = manifest_metadata(path)
    if storage.is_url(path):
        df = pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pandas()
    else:
        df = pq.read_table(path).to_pandas()
    missing = [c for c in ("image_id", "path", "split") if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: not a medclip manifest, missing columns {missing}")
    base = (
        storage.as_location(str(root))
        if root is not None
        else (Path(meta["root"]) if meta.get("root") else storage.parent(path))
    )
    if resolve_paths:

        def absolute(p: str) -> str:
            return str(p) if Path(p).is_absolute() or storage.is_url(p) else str(storage.join(base, p))

        df["path"] = [absolute(p) for p in df["path"]]
        if "files" in df:
            df["files"] = [None if f is None else [absolute(x) for x in f] for f in df["files"]]
    df.attrs["medclip"] = meta
    return df


def manifest_from_records(
    records: pd.DataFrame,
    root: str | Path,
    *,
    salt: str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    require_files: bool = True,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """A manifest from a published dataset's table (used by the recipes in ``datasets/``).

    ``records`` has at least ``path`` (relative to ``root``) and ``patient`` (the dataset's raw patient
    id), optionally ``study``, ``split`` (the dataset's official split, kept when given; "validate" and
    "valid" become "val"), ``report_text`` / ``report_findings`` / ``report_impression`` /
    ``report_indication``, ``view_position``, ``manufacturer``, ``sex``, ``age`` and ``label.<concept>`` columns.
    Raw ids are hashed with the salt; rows whose file is missing are dropped and counted.
    Returns the manifest and counts (``rows``, ``missing_files``).
    """
    from medclip.data.reports import parse_sections, scrub_identifiers
    from medclip.data.splits import assign_splits
    from medclip.deid import coarse_age, coarse_sex, hash_identifier

    root = Path(root).resolve()
    df = records.copy().reset_index(drop=True)
    for col in ("path", "patient"):
        if col not in df:
            raise ManifestError(f"recipe records need a {col!r} column")
    counts = {"rows": len(df), "missing_files": 0}
    if require_files:
        exists = [(root / str(p)).is_file() for p in df["path"]]
        counts["missing_files"] = int(len(df) - sum(exists))
        df = df[exists].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "image_id": [hash_identifier(p, salt) for p in df["path"].astype(str)],
            "path": df["path"].astype(str),
            "kind": df.get("kind", pd.Series(["image"] * len(df))),
            "files": [None] * len(df),
            "patient_id": [hash_identifier(p, salt) for p in df["patient"].astype(str)],
        }
    )
    study = df["study"].astype(str) if "study" in df else df["path"].map(lambda p: str(Path(str(p)).parent))
    out["study_id"] = [hash_identifier(f"{p}/{s}", salt) for p, s in zip(df["patient"].astype(str), study)]
    out["series_id"] = out["study_id"]
    for col in ("modality", "view_position", "body_part", "photometric", "manufacturer"):
        out[col] = df[col].fillna("").astype(str) if col in df else ""
    out["rows"], out["columns"], out["frames"] = 0, 0, 1
    out["sex"] = [coarse_sex(x) for x in df["sex"]] if "sex" in df else ""
    out["age_group"] = [coarse_age(x) for x in df["age"]] if "age" in df else ""
    for col in ("report_indication", "report_findings", "report_impression", "report_text"):
        out[col] = df[col].fillna("").astype(str).map(scrub_identifiers) if col in df else ""
    no_sections = (out["report_findings"] == "") & (out["report_impression"] == "") & (out["report_text"] != "")
    for i in out.index[no_sections]:
        s = parse_sections(out.at[i, "report_text"])
        out.at[i, "report_findings"], out.at[i, "report_impression"] = s.findings, s.impression
        out.at[i, "report_indication"] = out.at[i, "report_indication"] or s.indication
    if "split" in df and df["split"].notna().all():
        out["split"] = (
            df["split"].astype(str).str.lower().replace({"validate": "val", "valid": "val", "validation": "val"})
        )
    else:
        out["split"] = assign_splits(out["patient_id"], fractions, seed, image_ids=out["image_id"])
    out["file_size"] = [int((root / p).stat().st_size) if (root / p).is_file() else 0 for p in out["path"]]
    out["mtime"] = [float((root / p).stat().st_mtime) if (root / p).is_file() else 0.0 for p in out["path"]]
    for col in [c for c in df.columns if c.startswith(LABEL_PREFIX)]:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float32")
    used = {"path", "patient", "study", "split", "sex", "age", "kind", *MANIFEST_COLUMNS}
    for col in df.columns:  # dataset-specific extras (e.g. reference labels kept for evaluation)
        if col not in used and not col.startswith(LABEL_PREFIX):
            out[col] = df[col].values
    counts["rows"] = len(out)
    return out, counts
