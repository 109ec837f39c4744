"""The ``medclip adapt`` subcommand: its arguments (``add_adapt_arguments``, defined once) and handler."""

from __future__ import annotations

import argparse

from .methods import METHODS

ADAPT_HELP = "few-shot adaptation: linear probe, GDA, Tip-Adapter(-F), CoOp and LoRA from a few labelled studies"
ADAPT_DESCRIPTION = (
    "Draw k positive and k negative training images per finding (by patient, several draws per k), fit each "
    "method, score it on the test split's patients (disjoint from the shots) beside zero-shot, print the "
    "methods x shots table, and save each method's classifier of the largest k next to the checkpoint "
    "(adapters/<method>/, with provenance) for `medclip eval --adapter METHOD` and the demo."
)


def _ints(text: str) -> list[int]:
    try:
        values = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(k < 1 for k in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    methods = [m.strip().replace("-", "_") for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or [text]}; choose from {', '.join(METHODS)}")
    return methods


def add_adapt_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip adapt`` (the one definition)."""
    p.add_argument("--checkpoint", required=True, help="medclip checkpoint folder (or hf-hub id)")
    p.add_argument("--manifest", required=True, help="labelled manifest (label.<finding> columns, patient splits)")
    p.add_argument("--shots", type=_ints, default=[1, 2, 4, 8, 16], help="shots per class (default: 1,2,4,8,16)")
    p.add_argument(
        "--methods", type=_methods, default=list(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    p.add_argument("--draws", type=int, default=3, help="random draws of the shots per k (default: %(default)s)")
    p.add_argument(
        "--features",
        choices=["backbone", "embedding"],
        default="backbone",
        help="image features of the probes, GDA and Tip-Adapter keys: the encoder's before the projection "
        "(default) or the model's normalised embedding",
    )
    p.add_argument("--findings", default=None, help="comma-separated findings (default: every labelled one)")
    p.add_argument("--train-split", default="train", help="split the shots are drawn from")
    p.add_argument("--split", default="test", help="split the methods are scored on (patients disjoint)")
    p.add_argument(
        "--unmentioned-as-negative", action="store_true", help="NaN labels (not mentioned) count as negative"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps of the trained methods (Tip-Adapter-F 50, CoOp 100, LoRA 30 by default)",
    )
    p.add_argument("--no-save", action="store_true", help="only print the table; save no classifier")
    p.add_argument("-o", "--output", default=None, help="folder of adapt.json (default: <checkpoint>/adapters)")
    p.add_argument("--max-images", type=int, default=None, help="cap images per split (whole patients)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def run_adapt_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip adapt``."""
    from .runner import format_adapt, run_adapt

    if args.steps is not None and args.steps < 1:
        raise ValueError("--steps must be at least 1")
    if "lora" in args.methods:  # before any model is loaded: one line naming the extra to install
        from medclip.optional import import_optional

        import_optional("peft", "adapt", "medclip adapt --methods lora")
    results = run_adapt(
        args.checkpoint,
        args.manifest,
        shots=args.shots,
        methods=args.methods,
        draws=args.draws,
        seed=args.seed,
        features=args.features,
        train_split=args.train_split,
        test_split=args.split,
        findings=args.findings.split(",") if args.findings else None,
        unmentioned_as_negative=args.unmentioned_as_negative,
        save=not args.no_save,
        output=args.output,
        batch_size=args.batch_size,
        max_images=args.max_images,
        method_options=(
            {m: {"steps": args.steps} for m in ("tip_adapter_f", "coop", "lora")} if args.steps is not None else None
        ),
    )
    print(format_adapt(results))
    for method, folder in results.get("saved", {}).items():
        print(f"saved {method}: {folder}")
    print(f"results: {results['results_file']}")
    return 0


def add_adapt_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``adapt`` (arguments and handler) on the ``medclip`` command's subparsers."""
    p = subparsers.add_parser("adapt", help=ADAPT_HELP, description=ADAPT_DESCRIPTION)
    add_adapt_arguments(p)
    p.set_defaults(func=run_adapt_command)
    return p
