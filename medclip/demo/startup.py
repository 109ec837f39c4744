"""The demo's start-up, shared by ``medclip demo`` and ``python app.py``: options, checkpoint discovery, engine.

Imports go one way: ``medclip.demo.cli`` (the ``medclip demo`` subcommand) -> ``medclip.demo.app``
(the Gradio page, its serving and ``python app.py``'s ``main``) -> this module. Nothing here imports
gradio or the page: :func:`run_demo` is handed the function that serves it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from medclip.fsutil import clean_stale_temp_dirs

from .uploads import UploadLimits

__all__ = [
    "AUTH_ENV",
    "NO_CHECKPOINT_HELP",
    "add_demo_arguments",
    "build_demo_parser",
    "find_checkpoint",
    "load_engine",
    "parse_auth",
    "run_demo",
]

#: Where ``medclip quickstart`` (the README's main command) writes its model folder.
QUICKSTART_MODEL = Path("runs") / "quickstart" / "model"
#: Environment variable with ``user:password`` for basic auth (keeps the password out of ``ps``).
AUTH_ENV = "MEDCLIP_DEMO_AUTH"

NO_CHECKPOINT_HELP = """\
No trained checkpoint found (looked for {looked}).
Make one offline in a few minutes on a CPU with the README's main command:

    medclip quickstart

then start the demo again (`medclip demo` in the same folder, or `python app.py` in the repository).
Any checkpoint folder written by `medclip fit` (config.json + model.safetensors) works with --checkpoint DIR.
"""


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (shared by ``medclip demo`` and ``python app.py``)."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"model folder (default: {QUICKSTART_MODEL} in the working directory)",
    )
    parser.add_argument(
        "--gallery",
        type=Path,
        default=None,
        help="reference gallery folder (default: CHECKPOINT/gallery, built from the quick start's cache "
        "when that exists)",
    )
    parser.add_argument(
        "--build-gallery",
        type=Path,
        default=None,
        metavar="MANIFEST_OR_CACHE",
        help="(re)build the gallery from a manifest (.parquet) or cache folder before serving",
    )
    parser.add_argument(
        "--gallery-split", default="train", help="split the gallery studies come from ('all' for every split)"
    )
    parser.add_argument(
        "--findings", default=None, help="task name or comma-separated concept ids (default: chexpert14)"
    )
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="METHOD",
        help="score the findings with the few-shot classifier `medclip adapt` saved in CHECKPOINT/adapters/METHOD "
        "(linear_probe, gda, tip_adapter, tip_adapter_f, coop, lora) instead of zero-shot",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: the first free one from 7860)")
    parser.add_argument(
        "--auth", default=None, metavar="USER:PASS", help=f"require basic auth (or set ${AUTH_ENV}=user:pass)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=UploadLimits.max_upload_bytes / 1024**2,
        help="largest accepted upload in MiB",
    )
    parser.add_argument(
        "--max-kept-mb",
        type=float,
        default=UploadLimits.max_kept_bytes / 1024**2,
        help="decoded studies kept for re-windowing, all users together, in MiB (least recently used set aside first)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=UploadLimits.max_pixels / 1e6,
        help="largest accepted 2D image in megapixels",
    )
    return parser


def build_demo_parser(prog: str = "app.py") -> argparse.ArgumentParser:
    """The parser of ``python app.py``: ``medclip demo``'s arguments plus ``-q``/``-v``."""
    from medclip.commands import standalone_parser

    return standalone_parser(prog, "medclip triage demo (Gradio)", add_demo_arguments)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``"user:pass"`` -> (user, pass); None or "" -> None. Raises ValueError for a malformed value."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth needs USER:PASS with both parts non-empty")
    return user, password


def find_checkpoint(checkpoint: Path | None) -> Path | None:
    """The named checkpoint folder, or the quick start's model folder in the working directory."""
    if checkpoint is not None:
        return checkpoint
    from medclip.checkpoint import CheckpointDir

    candidate = Path.cwd() / QUICKSTART_MODEL
    return candidate if CheckpointDir(candidate).is_model() else None


def _findings(value: str | None) -> str | list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()] if "," in value else value


def load_engine(args: argparse.Namespace):  # -> TriageEngine (imported lazily: torch is slow to import)
    """Build the gallery if asked (or if the quick start's cache sits beside the model), then load the engine."""
    from medclip.model import DualEncoder

    from .engine import TriageEngine, default_gallery_dir
    from .gallery import GALLERY_INFO, build_gallery

    checkpoint = Path(args.checkpoint)
    gallery_dir = Path(args.gallery) if args.gallery is not None else default_gallery_dir(checkpoint)
    source = args.build_gallery
    quickstart_cache = checkpoint.parent / "cache"
    if (
        source is None
        and args.gallery is None
        and not (gallery_dir / GALLERY_INFO).is_file()
        and (quickstart_cache / "cache.json").is_file()
    ):
        source = quickstart_cache
    if source is not None:
        split = None if args.gallery_split == "all" else args.gallery_split
        print(f"building the reference gallery from {source} into {gallery_dir} ...", flush=True)
        model = DualEncoder.from_pretrained(checkpoint).eval()
        build_gallery(model, source, gallery_dir, split=split, progress=True)
    return TriageEngine.load(
        checkpoint, args.gallery, findings=_findings(args.findings), adapter=getattr(args, "adapter", None)
    )


def run_demo(args: argparse.Namespace, serve: Callable[..., int]) -> int:
    """Checkpoint -> engine -> ``serve(engine, host=, port=, auth=, limits=)`` (the page: ``medclip.demo.app.serve``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    stale = clean_stale_temp_dirs()  # what demos killed mid-upload (SIGKILL, power loss) left behind
    if stale:
        print(f"removed {len(stale)} temporary folder(s) left by medclip processes that were killed", file=sys.stderr)
    try:
        auth = parse_auth(args.auth or os.environ.get(AUTH_ENV))
    except ValueError as exc:
        print(f"medclip demo: error: {exc}", file=sys.stderr)
        return 2
    checkpoint = find_checkpoint(args.checkpoint)
    if checkpoint is None:
        looked = str(Path.cwd() / QUICKSTART_MODEL)
        print(NO_CHECKPOINT_HELP.format(looked=looked), file=sys.stderr)
        return 1
    args.checkpoint = checkpoint
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(
            f"warning: serving on {args.host} without --auth: anyone who can reach this address can use the demo",
            file=sys.stderr,
        )
    limits = UploadLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024**2),
        max_pixels=int(args.max_megapixels * 1e6),
        max_kept_bytes=int(getattr(args, "max_kept_mb", UploadLimits.max_kept_bytes / 1024**2) * 1024**2),
    )
    try:
        engine = load_engine(args)
    except (FileNotFoundError, ValueError) as exc:  # ModelLoadError, GalleryError, CacheError are ValueErrors
        print(f"medclip demo: error: {exc}", file=sys.stderr)
        return 2
    return int(serve(engine, host=args.host, port=args.port, auth=auth, limits=limits) or 0)
