"""``medclip report``: one command from a checkpoint to an audited report (HTML, Markdown, JSON).

>>> from medclip.report import build_report
>>> result = build_report("runs/quickstart/model", "runs/quickstart/eval_manifest.parquet", "runs/quickstart/report")
>>> print(result.summary())

Sections: summary, model card, data card, leakage audit, performance (internal test split), external
validation, operating points, calibration, subgroups, failure gallery, PHI scan of the report itself,
the CLAIM 2024 / TRIPOD+AI checklist map and the study information the researcher gives.
"""

from .builder import ReportError, ReportOptions, ReportResult, build_report

__all__ = ["ReportError", "ReportOptions", "ReportResult", "build_report"]
