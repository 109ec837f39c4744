"""``medclip report``: its options (defined once) and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

REPORT_HELP = "an audited report of a checkpoint on a manifest: data card, leakage, subgroups, calibration, failures"
REPORT_DESCRIPTION = (
    "Write report/index.html (one self-contained page), report/report.md and report/report.json: the model card, "
    "what data went in per split, a leakage audit across splits, zero-shot performance with patient-bootstrap CIs, "
    "external validation, operating points, calibration, subgroups, the most confident errors, a PHI scan of the "
    "report itself and the CLAIM 2024 / TRIPOD+AI checklist map. Reuses medclip eval's results for the same model "
    "and manifest."
)


def add_report_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip report`` (the one definition)."""
    from .builder import ReportOptions

    d = ReportOptions()
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (medclip fit's model folder)")
    p.add_argument("--manifest", type=Path, required=True, help="labelled manifest with train/val/test splits")
    p.add_argument(
        "--external",
        type=Path,
        action="append",
        default=[],
        metavar="MANIFEST",
        help="a labelled manifest from another site or public set, evaluated whole (repeat for several)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("report"), help="report folder (default: %(default)s)")
    p.add_argument(
        "--study-info", type=Path, default=None, help="YAML with what only you can say (reference standard, ...)"
    )
    p.add_argument("--split", default=d.split, help="internal test split (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split, help="validation split (default: %(default)s)")
    p.add_argument("--train-split", default=d.train_split, help="training split (default: %(default)s)")
    p.add_argument("--findings", default=None, help="comma-separated concept ids (default: every labelled finding)")
    p.add_argument(
        "--unmentioned-as-negative", action="store_true", help="findings a report does not mention count as negative"
    )
    p.add_argument("--prompt-style", default=d.style, help="zero-shot prompt style (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=d.n_boot, help="bootstrap resamples per CI (default: %(default)s)")
    p.add_argument(
        "--min-positives",
        type=int,
        default=d.min_support,
        help="fewest positives (and negatives) for an estimate to be shown (default: %(default)s)",
    )
    p.add_argument("--failures", type=int, default=d.failures_per_finding, help="errors shown per finding and kind")
    p.add_argument(
        "--no-image-leakage",
        action="store_true",
        help="skip the near-duplicate image search (it reads every image of the manifest once)",
    )
    p.add_argument("--cache", default=None, help="read the leakage audit's images from this medclip cache (faster)")
    p.add_argument("--phi-values", type=Path, default=None, help="text file of extra identifier values to scan for")
    p.add_argument(
        "--eval",
        type=Path,
        default=None,
        help="medclip eval's output folder whose results to reuse (default: <checkpoint>/eval)",
    )
    p.add_argument("--no-reuse", action="store_true", help="recompute instead of reusing eval's saved results")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=d.num_workers, help="image decoding workers")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    return p


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on the ``medclip`` command's subparsers."""
    p = subparsers.add_parser("report", help=REPORT_HELP, description=REPORT_DESCRIPTION)
    add_report_arguments(p)
    p.set_defaults(func=run_report_command)
    return p


def run_report_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip report``; exit code 3 when the report's PHI scan found a hit."""
    from .builder import ReportOptions, build_report

    findings = [f.strip() for f in args.findings.split(",") if f.strip()] if args.findings else None
    if args.bootstrap < 0 or args.min_positives < 1 or args.failures < 0:
        raise ValueError("--bootstrap and --failures must be >= 0 and --min-positives >= 1")
    options = ReportOptions(
        split=args.split,
        val_split=args.val_split,
        train_split=args.train_split,
        findings=findings,
        unmentioned_as_negative=args.unmentioned_as_negative,
        style=args.prompt_style,
        n_boot=args.bootstrap,
        seed=args.seed,
        min_support=args.min_positives,
        failures_per_finding=args.failures,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        leakage_images=not args.no_image_leakage,
        cache_dir=args.cache,
        study_info=None if args.study_info is None else str(args.study_info),
        phi_values=None if args.phi_values is None else str(args.phi_values),
        reuse=not args.no_reuse,
        eval_dir=None if args.eval is None else str(args.eval),
        progress=not getattr(args, "quiet", False),
    )
    result = build_report(args.checkpoint, args.manifest, args.output, args.external, options)
    print(result.summary())
    if not result.phi_ok:
        print(
            "medclip report: the PHI scan found identifiers in the report (listed in its PHI section); do not share it"
        )
        return 3
    return 0


__all__ = ["add_report_arguments", "add_report_parser", "run_report_command"]
