"""Building blocks every medclip command line shares: ``-q``/``-v`` and a stand-alone parser for a subcommand.

Each subcommand defines its arguments once (``add_<command>_arguments(parser)`` in the module that owns
it); ``medclip <command>`` registers them as a subparser, and the side entry points
(``python -m medclip.eval``, ``python -m medclip.train``, ``python -m medclip.knowledge``, ``python app.py``)
build their parser from the same function with :func:`standalone_parser`, so their options cannot drift.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_global_flags", "standalone_parser"]


def add_global_flags(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``-q``/``--quiet`` and ``-v``/``--verbose``; on subcommands with ``default=SUPPRESS`` so that a
    flag given before the subcommand is not reset by the subcommand's default."""
    parser.add_argument(
        "-q", "--quiet", "--no-progress", dest="quiet", action="store_true", default=default, help="no progress bars"
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


def standalone_parser(
    prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], object]
) -> argparse.ArgumentParser:
    """A parser for one command on its own: its arguments (``add_arguments``) plus ``-q``/``-v``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    add_global_flags(parser)
    return parser
