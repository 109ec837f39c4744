"""Finding labels in a manifest: ``label.<concept_id>`` and ``label_evidence`` columns from a report labeler.

:func:`label_manifest` reads a manifest, labels every row's report with a
:class:`medclip.knowledge.Labeler` (the knowledge-driven :class:`~medclip.knowledge.ReportLabeler` by
default) and writes it back through :func:`medclip.data.manifest.write_manifest`, the one writer of
manifest Parquet. What the columns mean is in docs/ARCHITECTURE.md (Manifest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from medclip.knowledge.labeler import NOT_MENTIONED, Labeler, ReportLabeler

from .manifest import LABEL_PREFIX, manifest_metadata, write_manifest

#: The manifest's report columns, in the order the labeler reads them.
REPORT_COLUMNS = ("report_indication", "report_findings", "report_impression", "report_text")


def report_sections(row: Mapping[str, object]) -> dict[str, str]:
    """The sections of one manifest row: split sections when present, else the full text."""

    def text(col: str) -> str:
        v = row.get(col)
        return v if isinstance(v, str) else ""

    if text("report_findings").strip() or text("report_impression").strip():
        return {c.removeprefix("report_"): text(c) for c in REPORT_COLUMNS[:3] if text(c).strip()}
    return {"text": text("report_text")} if text("report_text").strip() else {}


def label_manifest(
    manifest_path: str | Path,
    output_path: str | Path | None = None,
    findings: str | Iterable[str] | None = None,
    progress: bool = True,
    labeler: Labeler | None = None,
) -> pd.DataFrame:
    """Add ``label.<concept_id>`` (float32) and ``label_evidence`` (JSON) columns to a manifest.

    Reads the Parquet, labels every row's report, and writes atomically to ``output_path`` (or
    in place), keeping the manifest's medclip metadata (export root, salt check, index options).
    Returns the labelled DataFrame.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest not found")
    try:
        table = pq.read_table(manifest_path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{manifest_path}: not a readable Parquet manifest ({exc})") from exc
    present = [c for c in REPORT_COLUMNS if c in table.column_names]
    if not present:
        raise ValueError(f"{manifest_path}: no report columns (expected one of {', '.join(REPORT_COLUMNS)})")
    if labeler is None:
        labeler = ReportLabeler(findings=findings)
    wanted = (
        labeler.findings
        if findings is None
        else [f for f in labeler.findings if f in set(labeler.graph.resolve(findings))]
        if hasattr(labeler, "graph")
        else labeler.findings
    )
    df = table.to_pandas()
    df = df.drop(columns=[c for c in df.columns if c.startswith(LABEL_PREFIX) or c == "label_evidence"])
    values = np.full((len(df), len(wanted)), np.nan, dtype=np.float32)
    evidence = []
    rows = df[present].to_dict("records")
    for i, row in enumerate(tqdm(rows, desc="labelling reports", unit="report", disable=not progress)):
        result = labeler.label(report_sections(row))
        values[i] = [result[cid].value for cid in wanted]
        evidence.append(
            json.dumps(
                {cid: result[cid].to_json() for cid in wanted if result[cid].status != NOT_MENTIONED},
                ensure_ascii=False,
            )
        )
    labels = pd.DataFrame(values, columns=[f"{LABEL_PREFIX}{cid}" for cid in wanted], index=df.index)
    df = pd.concat([df, labels], axis=1)
    df["label_evidence"] = evidence
    # paths stay as stored (relative to the export root named in the metadata, which is kept)
    write_manifest(
        df, Path(output_path) if output_path is not None else manifest_path, extra=manifest_metadata(manifest_path)
    )
    return df


__all__ = ["REPORT_COLUMNS", "label_manifest", "report_sections"]
