"""Per-image zero-shot probabilities, kept beside the checkpoint for one model and one manifest.

``<checkpoint>/eval/scores/<manifest sha256>-<split>.parquet``: ``image_id`` and one ``prob.<finding>``
column per finding, with the model fingerprint, manifest fingerprint, findings and prompt style in the
Parquet metadata. ``medclip report`` reuses a file whose four keys match (no image is decoded or
embedded again) and writes one when it had to embed; any mismatch means "compute again".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medclip.fsutil import atomic_write

SCORES_DIR = "scores"
PROB_PREFIX = "prob."
_META_KEY = b"medclip.scores"


def scores_path(eval_dir: str | Path, manifest_sha256: str, split: str) -> Path:
    """Where the scores of one manifest's split are kept."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return Path(eval_dir) / SCORES_DIR / f"{manifest_sha256}-{safe}.parquet"


def save_scores(
    path: Path,
    image_ids: Sequence[str],
    probs: np.ndarray,
    findings: Sequence[str],
    *,
    model_fingerprint: str | None,
    manifest_sha256: str,
    style: str,
) -> Path:
    """Write the probabilities (N, F) of the images ``image_ids`` atomically."""
    df = pd.DataFrame({"image_id": [str(i) for i in image_ids]})
    for j, finding in enumerate(findings):
        df[PROB_PREFIX + finding] = probs[:, j].astype("float32")
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {
        "model_fingerprint": model_fingerprint,
        "manifest_sha256": manifest_sha256,
        "findings": list(findings),
        "style": style,
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return path


def load_scores(
    path: Path,
    image_ids: Sequence[str],
    findings: Sequence[str],
    *,
    model_fingerprint: str | None,
    manifest_sha256: str,
    style: str,
) -> np.ndarray | None:
    """The saved (N, F) probabilities in the order of ``image_ids``, or None when the file is missing, was
    written for another model, manifest, finding list or prompt style, or lacks one of the images."""
    if model_fingerprint is None or not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    except (OSError, ValueError, pa.ArrowException):
        return None
    if (
        meta.get("model_fingerprint") != model_fingerprint
        or meta.get("manifest_sha256") != manifest_sha256
        or meta.get("style") != style
        or list(meta.get("findings") or []) != list(findings)
    ):
        return None
    df = table.to_pandas().set_index("image_id")
    ids = [str(i) for i in image_ids]
    if not set(ids) <= set(df.index):
        return None
    return df.loc[ids, [PROB_PREFIX + f for f in findings]].to_numpy(dtype=np.float64)
