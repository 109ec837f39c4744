"""``python -m medclip.knowledge MANIFEST [-o OUT] [--findings TASK] [--versus-policy P]``: label a manifest's
reports; the same command and options as ``medclip label``."""

from __future__ import annotations

import argparse
import sys

from medclip.cli import LABEL_HELP, add_label_arguments, run_label_command
from medclip.commands import standalone_parser
from medclip.logging_setup import setup_logging, verbosity_of


def build_label_parser() -> argparse.ArgumentParser:
    """``medclip label``'s arguments plus ``-q``/``-v``."""
    return standalone_parser("python -m medclip.knowledge", LABEL_HELP, add_label_arguments)


def main(argv: list[str] | None = None) -> int:
    """Label a manifest's reports (``medclip label``)."""
    args = build_label_parser().parse_args(argv)
    setup_logging(verbosity_of(args))
    try:
        return run_label_command(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
