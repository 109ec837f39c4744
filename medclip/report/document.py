"""The report as a document: sections of paragraphs, tables, figures and thumbnail galleries.

One neutral structure, rendered twice (:mod:`medclip.report.render`): a self-contained HTML page and
Markdown with its images beside it. The numbers themselves live in ``report.json``; these blocks only
present them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Paragraph:
    """Plain text (no markup)."""

    text: str


@dataclass
class Callout:
    """A line that must stand out: ``level`` is "warning", "ok" or "info"."""

    text: str
    level: str = "warning"


@dataclass
class Table:
    """A table of strings; ``flagged`` holds the indices of rows to highlight."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    note: str = ""
    flagged: set[int] = field(default_factory=set)


@dataclass
class Figure:
    """A PNG image; ``name`` is its file name beside the Markdown report."""

    png: bytes
    caption: str
    name: str


@dataclass
class GalleryItem:
    """One thumbnail (PNG) with a title and a few lines of text under it."""

    png: bytes
    title: str
    lines: list[str] = field(default_factory=list)
    name: str = ""


@dataclass
class Gallery:
    """A row of thumbnails."""

    caption: str
    items: list[GalleryItem]


Block = Paragraph | Callout | Table | Figure | Gallery


@dataclass
class Section:
    """One section of the report; ``id`` is its anchor (``#data-card``) and its key in report.json."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    """The whole report."""

    title: str
    subtitle: str
    sections: list[Section]

    def section(self, section_id: str) -> Section:
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(section_id)
