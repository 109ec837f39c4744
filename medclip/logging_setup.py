"""Logging of medclip's command lines, set up in one place: :func:`setup_logging`.

Every entry point (``medclip``, ``python -m medclip.train|eval|knowledge``, the demo) calls it once
after parsing its arguments. It gives the process one console handler on stderr and

- routes Lightning's loggers through that handler only: Lightning puts its own console handler on
  the ``lightning`` logger at import, so without this each of its INFO lines ("Seed set to 11",
  "GPU available: ...") prints twice, once per handler;
- drops Lightning's advertisements ("💡 Tip: ... litlogger / litmodels ...");
- ignores deprecation and future warnings raised inside third-party packages (Lightning, torch,
  transformers, ...): they are for those packages' maintainers, not for a medclip user.
  ``-v`` shows them again, with DEBUG logging.

Library code never calls this; it only logs to ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import TextIO

#: Loggers that Lightning writes to (their records would also reach the ``lightning`` logger's own handler).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

#: Messages that are advertisements, not information about the run.
_ADVERT = re.compile(r"💡|\blit(logger|models)\b|lightning\.ai/|Lightning (AI|Studio|Experiments)", re.IGNORECASE)
#: Lightning INFO lines about its own internals that ask nothing of a medclip user (medclip loads its own checkpoints).
_NOISE = re.compile(r"^`weights_only` was not set")

#: Packages whose DeprecationWarning / FutureWarning are hidden unless ``-v``.
_THIRD_PARTY = (
    r"(lightning|pytorch_lightning|lightning_fabric|torch|torchvision|torchmetrics|timm|transformers|"
    r"huggingface_hub|tokenizers|monai|webdataset|gradio|pydantic)(\..*)?$"
)


class AdvertFilter(logging.Filter):
    """Drops log records that advertise a product (Lightning's "💡 Tip" lines) or are Lightning-internal noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to judge: let the handler report it
            return True
        return not (_ADVERT.search(message) or _NOISE.search(message))


class _Formatter(logging.Formatter):
    """``LEVEL name: message``, with Lightning's deep module names shown as ``lightning``."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
            name = "lightning"
        return f"{record.levelname} {name}: {super().format(record)}"


class _MedclipHandler(logging.StreamHandler):
    """The one console handler :func:`setup_logging` installs (recognised to stay idempotent)."""


def setup_logging(verbosity: int = 0, stream: TextIO | None = None) -> logging.Handler:
    """Configure console logging for a command line run; calling it again replaces the previous set-up.

    ``verbosity`` 0: WARNING for everything except Lightning's INFO lines (each printed once),
    adverts dropped, third-party deprecation / future warnings ignored. 1 or more: DEBUG, all
    warnings shown. Returns the handler (on stderr unless ``stream``).
    """
    root = logging.getLogger()
    for logger in (root, *(logging.getLogger(n) for n in LIGHTNING_LOGGERS)):
        for old in [h for h in logger.handlers if isinstance(h, _MedclipHandler)]:
            logger.removeHandler(old)
    handler = _MedclipHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(AdvertFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
    for name in LIGHTNING_LOGGERS:
        # our handler directly, and no propagation: the record never reaches the `lightning` logger's own
        # console handler (added when lightning is imported, possibly after this call) nor root's
        logger = logging.getLogger(name)
        for own in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(own)  # Lightning's console handler, when it was imported before this call
        logger.addHandler(handler)
        logger.propagate = False
        if verbosity > 0:
            logger.setLevel(logging.DEBUG)
    if verbosity <= 0:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    return handler


def verbosity_of(args: object) -> int:
    """``1`` for ``-v/--verbose`` in parsed arguments, ``-1`` for ``-q/--quiet``, else ``0``."""
    if getattr(args, "verbose", False):
        return 1
    return -1 if getattr(args, "quiet", False) else 0


__all__ = ["AdvertFilter", "LIGHTNING_LOGGERS", "setup_logging", "verbosity_of"]
