"""``python -m medclip.train --config CONFIG.yaml [key=value ...]``: the same as ``medclip fit``.

Useful under ``torchrun`` (``torchrun ... -m medclip.train --config ...``) and in SLURM scripts.
"""

from __future__ import annotations

import argparse
import sys

from medclip.logging_setup import setup_logging
from medclip.train import ConfigError, fit


def main(argv: list[str] | None = None) -> int:
    """Parse ``--config`` and overrides, train, print the exported model folder."""
    parser = argparse.ArgumentParser(prog="python -m medclip.train", description=__doc__)
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=10")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        model_dir = fit(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # every DDP process returns from fit(); one prints
        print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
