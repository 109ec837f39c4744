"""The manifest: one Parquet row per image or assembled volume, de-identified, with its split."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns every manifest has, in order. Labels (``label.<concept>``) are added by ``medclip label``.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "kind", "files", "patient_id", "study_id", "series_id",
    "modality", "view_position", "body_part", "photometric", "rows", "columns", "frames",
    "sex", "age_group", "report_indication", "report_findings", "report_impression", "report_text",
    "split", "file_size", "mtime",
)
LABEL_PREFIX = "label."
_META_KEY = b"medclip"


class ManifestError(ValueError):
    """A manifest that cannot be read or lacks required columns."""


def label_columns(df: pd.DataFrame) -> list[str]:
    """The ``label.<concept>`` columns of a manifest, in column order."""
    return [c for c in df.columns if c.startswith(LABEL_PREFIX)]


def write_manifest(df: pd.DataFrame, path: str | Path, root: str | Path | None = None,
                   extra: dict | None = None) -> Path:
    """Write atomically as Parquet; ``path`` values are stored relative to ``root`` (kept in the file metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    """The medclip metadata stored in a manifest (export root, salt check, index options)."""
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for non-Parquet input
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def read_manifest(path: str | Path, *, resolve_paths: bool = True, root: str | Path | None = None) -> pd.DataFrame:
    """Read a manifest; relative ``path``/``files`` become absolute under the export root (or ``root``)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    meta = manifest_metadata(path)
    df = pq.read_table(path).to_pandas()
    missing = [c for c in ("image_id", "path", "split") if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: not a medclip manifest, missing columns {missing}")
    base = Path(root) if root is not None else (Path(meta["root"]) if meta.get("root") else path.parent)
    if resolve_paths:
        df["path"] = [str(p) if Path(p).is_absolute() else str(base / p) for p in df["path"]]
        if "files" in df:
            df["files"] = [None if f is None else [str(x) if Path(x).is_absolute() else str(base / x) for x in f]
                           for f in df["files"]]
    df.attrs["medclip"] = meta
    return df
