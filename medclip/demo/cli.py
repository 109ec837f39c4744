"""``medclip demo``: the subcommand. Start-up (options, checkpoint discovery, engine) is in
``medclip.demo.startup``; the page (Gradio layout, callbacks and serving) in ``medclip.demo.app``,
imported only when a page is served (gradio is slow to import). Imports go one way:
``cli`` -> ``app`` -> ``startup``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .startup import (
    AUTH_ENV,
    NO_CHECKPOINT_HELP,
    QUICKSTART_MODEL,
    add_demo_arguments,
    build_demo_parser,
    find_checkpoint,
    load_engine,
    parse_auth,
)
from .startup import run_demo as _run_demo

__all__ = [
    "AUTH_ENV",
    "NO_CHECKPOINT_HELP",
    "QUICKSTART_MODEL",
    "add_demo_arguments",
    "add_demo_parser",
    "build_demo_parser",
    "find_checkpoint",
    "load_engine",
    "parse_auth",
    "run_demo",
]


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand on the ``medclip`` command line."""
    parser = subparsers.add_parser(
        "demo",
        help="serve the Gradio triage demo on a checkpoint (offline, localhost)",
        description="Triage demo: upload DICOM / zipped series / NIfTI / PNG / JPEG, get "
        "ranked findings, priority, knowledge cards, similar studies and a "
        "drafted report. Research use only.",
    )
    add_demo_arguments(parser)
    parser.set_defaults(func=run_demo)
    return parser


def run_demo(args: argparse.Namespace, serve: Callable[..., int] | None = None) -> int:
    """Entry point of ``medclip demo``: checkpoint -> engine -> page (``serve`` defaults to ``medclip.demo.app.serve``)."""
    if serve is None:
        from .app import serve as page  # gradio is imported only when a page is served

        serve = page
    return _run_demo(args, serve)
