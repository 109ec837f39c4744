"""One way for browser tests to start Debian's Chromium through Playwright (never `playwright install`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def sync_playwright_api() -> Any:
    """Playwright's sync API, or a skip when Chromium or the package is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


def launch_chromium(pw: Any) -> Any:
    """A headless Chromium browser with no background network traffic of its own."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
