"""One PHI scanner for every test: the package's ``medclip.audit.phi`` plus assertions.

The scanner itself (what it decodes, how it matches) lives in :mod:`medclip.audit.phi`, where ``medclip report``
uses it too; tests import it from here as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medclip.audit.phi import (  # noqa: F401  (re-exported for the tests)
    IDENTIFIER_KEYWORDS,
    MIN_LENGTH,
    _check_values,
    file_texts,
    not_in_reference,
    phi_hits,
    planted_values_from_dicom,
)

#: DICOM keywords whose values are identifiers a de-identifier must remove (patient and staff).
PHI_KEYWORDS = IDENTIFIER_KEYWORDS


def assert_no_phi(paths: str | Path | Iterable[str | Path], planted: Iterable[str]) -> None:
    """Fail listing every planted identifier that reached any file under ``paths``."""
    hits = phi_hits(paths, planted)
    assert not hits, "planted identifiers reached the outputs:\n" + "\n".join(f"  {v!r} in {w}" for v, w in hits)


def assert_no_phi_in_text(text: str, planted: Iterable[str]) -> None:
    """Fail if any planted identifier occurs in ``text`` (a page, a log, a label)."""
    found = [v for v in _check_values(planted) if v.lower() in text.lower()]
    assert not found, f"planted identifiers reached the text: {found}"
