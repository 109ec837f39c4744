"""``python -m medclip.train --config CONFIG [key=value ...]``: the same as ``medclip fit`` (same options).

Useful under ``torchrun`` (``torchrun ... -m medclip.train --config ...``) and in SLURM scripts; prints the
exported model folder (rank 0).
"""

from __future__ import annotations

import argparse
import sys

from medclip.cli import FIT_DESCRIPTION, add_fit_arguments, run_fit_command
from medclip.commands import standalone_parser
from medclip.data.cache import CacheError
from medclip.fsutil import DiskFullError
from medclip.logging_setup import setup_logging, verbosity_of
from medclip.train import ConfigError
from medclip.train.module import NonFiniteLossError


def build_train_parser() -> argparse.ArgumentParser:
    """``medclip fit``'s arguments plus ``-q``/``-v``."""
    return standalone_parser("python -m medclip.train", FIT_DESCRIPTION, add_fit_arguments)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--config`` and overrides, train, print the exported model folder."""
    args = build_train_parser().parse_args(argv)
    setup_logging(verbosity_of(args))
    try:
        model_dir = run_fit_command(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DiskFullError, NonFiniteLossError, CacheError) as exc:  # the run stopped, saying why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if model_dir is not None:
        print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
