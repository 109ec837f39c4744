"""The ``medclip eval`` subcommand: its arguments (``add_eval_arguments``, defined once), ``add_eval_parser(subparsers)``
registers it on ``medclip``, ``main`` is ``python -m medclip.eval`` (the same arguments)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .runner import TASKS, EvalOptions


def _task_list(text: str) -> list[str]:
    """argparse type: one task or several, comma-separated."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown or [text]}; choose from {', '.join(TASKS)}")
    return tasks


EVAL_HELP = "zero-shot diagnosis, retrieval, report drafting and few-shot metrics with CIs and plots"
EVAL_DESCRIPTION = (
    "Evaluate a medclip checkpoint folder (or an open_clip model: 'open_clip:hf-hub:ORG/NAME', "
    "'open_clip:ARCH@weights.pt' or a folder with open_clip_config.json) on a manifest. Writes "
    "metrics.json and PNG plots to --output and prints tables."
)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` (arguments and handler) on the ``medclip`` command's subparsers."""
    p = subparsers.add_parser("eval", help=EVAL_HELP, description=EVAL_DESCRIPTION)
    add_eval_arguments(p)
    p.set_defaults(func=run_eval_command)
    return p


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip eval`` / ``python -m medclip.eval`` (the one definition)."""
    d = EvalOptions()
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, hf-hub id, or open_clip model (see above)")
    p.add_argument("--manifest", type=Path, required=True, help="labelled manifest (.parquet)")
    p.add_argument(
        "--task",
        action="append",
        metavar="TASK",
        type=_task_list,
        help=f"one of {', '.join(TASKS)}; repeat or comma-separate for several (default: all)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="folder for metrics.json and plots (default: <checkpoint>/eval or ./eval)",
    )
    p.add_argument("--split", default=d.split, help="split evaluated (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split, help="split thresholds are chosen on ('none' to skip)")
    p.add_argument("--train-split", default=d.train_split, help="split for the drafting corpus and few-shot examples")
    p.add_argument("--findings", help="comma-separated concept ids or a graph task name (default: every label column)")
    p.add_argument(
        "--text-field",
        default=d.text_field,
        choices=["body", "text", "findings", "impression"],
        help="report text used for retrieval and drafting (default: findings + impression)",
    )
    p.add_argument("--prompt-style", default=d.style, help="zero-shot prompt style (default: %(default)s)")
    p.add_argument(
        "--criterion",
        default=d.criterion,
        choices=["youden", "f1"],
        help="how thresholds are chosen on the validation split (default: %(default)s)",
    )
    p.add_argument(
        "--min-positives",
        type=int,
        default=d.min_positives,
        help="validation positives an operating point needs to count as calibrated (default: %(default)s)",
    )
    p.add_argument(
        "--min-negatives",
        type=int,
        default=d.min_negatives,
        help="validation negatives an operating point needs to count as calibrated (default: %(default)s)",
    )
    p.add_argument(
        "--auroc-floor",
        type=float,
        default=d.auroc_floor,
        help="a calibrated finding may raise the demo's triage priority only when the lower bound of its "
        "validation AUROC 95%% CI exceeds this (default: %(default)s)",
    )
    p.add_argument(
        "--unmentioned-as-negative",
        action="store_true",
        help="treat findings a report does not mention (NaN labels) as negative instead of unknown",
    )
    p.add_argument("--bootstrap", type=int, default=d.n_boot, help="bootstrap resamples for the CIs (0: none)")
    p.add_argument("--shots", default=",".join(map(str, d.shots)), help="few-shot k values (default: %(default)s)")
    p.add_argument(
        "--fewshot-features",
        choices=["backbone", "embedding"],
        default=d.fewshot_features,
        help="what the few-shot probes see: the encoder's features before the projection (default, as CLIP's "
        "own linear probes) or the model's normalised image embedding",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="METHOD",
        help="also score the few-shot classifier `medclip adapt` saved in the checkpoint folder "
        "(adapters/METHOD/; repeat or comma-separate for several)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=d.num_workers, help="image decoding workers")
    p.add_argument(
        "--max-images", type=int, default=None, help="cap images per split (whole patients) for a quick look"
    )
    p.add_argument(
        "--faiss", choices=["auto", "yes", "no"], default="auto", help="approximate index for large galleries"
    )
    p.add_argument(
        "--save-to-checkpoint",
        action="store_true",
        help="write thresholds.json (and print which findings got an operating point) and the report drafter "
        "into the checkpoint folder (for the demo)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu")
    return p


def run_eval_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip eval``."""
    from medclip.checkpoint import CheckpointDir
    from medclip.inference.openclip import is_open_clip

    from .runner import evaluate, format_results

    if args.faiss == "yes":  # before any model or image is loaded: one line naming the extra to install
        from medclip.optional import import_optional

        import_optional("faiss", "index", "--faiss yes")
    tasks = [t for group in args.task for t in group] if args.task else list(TASKS)
    try:
        shots = tuple(int(k) for k in args.shots.split(",") if k.strip())
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers, got {args.shots!r}") from None
    if any(k < 1 for k in shots):
        raise ValueError(f"--shots must be positive, got {args.shots!r}")
    output = args.output
    if output is None:
        ckpt = CheckpointDir(args.checkpoint)
        output = ckpt.eval_dir if ckpt.path.is_dir() and not is_open_clip(args.checkpoint) else Path("eval")
    results = evaluate(
        args.checkpoint,
        args.manifest,
        tasks,
        output_dir=output,
        save_to_checkpoint=args.save_to_checkpoint,
        device=args.device,
        split=args.split,
        val_split=None if str(args.val_split).lower() == "none" else args.val_split,
        train_split=args.train_split,
        findings=args.findings.split(",") if args.findings and "," in args.findings else args.findings,
        text_field=args.text_field,
        style=args.prompt_style,
        unmentioned_as_negative=args.unmentioned_as_negative,
        criterion=args.criterion,
        min_positives=args.min_positives,
        min_negatives=args.min_negatives,
        auroc_floor=args.auroc_floor,
        n_boot=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        use_faiss={"auto": "auto", "yes": True, "no": False}[args.faiss],
        shots=shots,
        fewshot_features=args.fewshot_features,
        adapters=[m.strip() for group in args.adapter for m in group.split(",") if m.strip()] if args.adapter else None,
        max_images=args.max_images,
    )
    print(format_results(results))
    print(f"\nmetrics: {output / 'metrics.json'}")
    for plot in results.get("plots", []):
        print(f"plot: {plot}")
    return 0


def build_eval_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m medclip.eval``: ``medclip eval``'s arguments plus ``-q``/``-v``."""
    from medclip.commands import standalone_parser

    return standalone_parser("python -m medclip.eval", EVAL_DESCRIPTION, add_eval_arguments)


def main(argv: list[str] | None = None) -> int:
    """Run ``eval`` on its own (``python -m medclip.eval``): the same options as ``medclip eval``."""
    import os
    import sys

    from medclip.logging_setup import setup_logging, verbosity_of
    from medclip.optional import MissingExtraError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_eval_parser().parse_args(argv)
    setup_logging(verbosity_of(args))
    try:
        return run_eval_command(args)
    except MissingExtraError as exc:
        print(f"medclip eval: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"medclip eval: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_eval_arguments", "add_eval_parser", "build_eval_parser", "run_eval_command"]
