"""Progress output that reads well in a log file: whether output is a terminal, and tqdm bars as plain lines.

Kept free of heavy imports: ``medclip index`` / ``cache`` / ``label`` / ``eval`` call
:func:`plain_progress_bars` when stderr is not a terminal; training's per-step lines are
:class:`medclip.train.progress.PlainProgress`.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or a non-file object
        return False


def format_duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``02:03:04`` / ``03:04``."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours or days else f"{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


_PLAIN_BARS = False
_COUNTS = re.compile(r"(\S+)/(\S+) \[")  # tqdm's "n/total [elapsed<remaining, rate]"


def plain_progress_bars(interval: float = 20.0) -> None:
    """Make every tqdm bar in this process print a plain line at most every ``interval`` seconds, and its
    final state, instead of redrawing one line with carriage returns (call it when stderr is a file)."""
    global _PLAIN_BARS
    if _PLAIN_BARS:
        return
    import tqdm.std

    def status_printer(file: TextIO):  # the same hook tqdm uses for its in-place line
        last: dict = {"time": float("-inf"), "text": "", "done": False}

        def print_status(text: str) -> None:
            text = text.strip()
            now = time.monotonic()
            if not text or text == last["text"]:
                return
            counts = _COUNTS.search(text)
            done = counts is not None and counts.group(1) == counts.group(2)
            if last["done"]:  # its final line is out (tqdm redraws it when closing)
                return
            if now - last["time"] >= interval or done:
                file.write(text + "\n")
                getattr(file, "flush", lambda: None)()
                last["time"], last["text"], last["done"] = now, text, done

        return print_status

    tqdm.std.tqdm.status_printer = staticmethod(status_printer)  # type: ignore[method-assign]
    _PLAIN_BARS = True
