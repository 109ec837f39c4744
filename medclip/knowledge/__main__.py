"""``python -m medclip.knowledge MANIFEST [-o OUT] [--findings TASK] [--versus-policy P]``: label a manifest's reports."""

from __future__ import annotations

import argparse
import sys

from medclip.data.labels import label_manifest
from medclip.logging_setup import setup_logging

from .labeler import VERSUS_POLICIES, ReportLabeler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medclip.knowledge", description="Label a manifest's reports.")
    ap.add_argument("manifest", help="manifest Parquet written by `medclip index`")
    ap.add_argument("-o", "--output", help="write here instead of updating the manifest in place")
    ap.add_argument("--findings", default=None,
                    help="task name (chexpert14, chest_xray_common) or comma-separated concept ids; default: all")
    ap.add_argument("--versus-policy", choices=VERSUS_POLICIES, default="uncertain",
                    help="status of the alternatives of a differential (\"A versus B\", \"A or B\"): "
                         "uncertain (CheXpert, default), first (first positive, rest uncertain), all (all positive)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    setup_logging()
    findings = args.findings
    if findings and "," in findings:
        findings = [f.strip() for f in findings.split(",") if f.strip()]
    try:
        labeler = ReportLabeler(findings=findings, versus_policy=args.versus_policy)
        df = label_manifest(args.manifest, args.output, findings=findings, progress=not args.no_progress,
                            labeler=labeler)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(c.startswith("label.") for c in df.columns)
    print(f"labelled {len(df)} rows x {n} findings -> {args.output or args.manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
