"""Render a :class:`~medclip.report.document.Document` as one self-contained HTML page or as Markdown.

The HTML page needs nothing but itself: styles inline, images as ``data:`` URIs, no script, no font,
no link that leaves the file, so it opens from a USB stick on a hospital workstation.
"""

from __future__ import annotations

import base64
import html

from .document import Callout, Document, Figure, Gallery, Paragraph, Section, Table

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
header{border-bottom:3px solid #0b5394;margin-bottom:16px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid #ccd;padding-bottom:4px}
.subtitle{color:#555;margin:0 0 12px}
nav ol{columns:3;font-size:14px;padding-left:20px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef2f7}
tr.flag td{background:#fdecea}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
.note{font-size:12px;color:#555;margin:2px 0 10px}
.callout{padding:6px 10px;margin:6px 0;border-left:4px solid}
.warning{background:#fff4e5;border-color:#e69500}.ok{background:#eaf6ec;border-color:#2e7d32}
.info{background:#eef2f7;border-color:#0b5394}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #ccd}
figcaption{font-size:12px;color:#555}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 14px}
.thumb{width:230px;font-size:12px;border:1px solid #ccd;padding:4px}
.thumb img{width:100%;image-rendering:pixelated}
.thumb b{display:block;margin:2px 0}
.scroll{overflow-x:auto}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_block(block: object) -> str:
    e = html.escape
    if isinstance(block, Paragraph):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Callout):
        return f'<div class="callout {e(block.level)}">{e(block.text)}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.header)
        rows = []
        for i, row in enumerate(block.rows):
            cls = ' class="flag"' if i in block.flagged else ""
            rows.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
        caption = f"<caption>{e(block.caption)}</caption>" if block.caption else ""
        note = f'<p class="note">{e(block.note)}</p>' if block.note else ""
        return (
            f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
        )
    if isinstance(block, Figure):
        return (
            f'<figure><img src="{_data_uri(block.png)}" alt="{e(block.caption)}">'
            f"<figcaption>{e(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Gallery):
        items = []
        for item in block.items:
            lines = "".join(f"<div>{e(line)}</div>" for line in item.lines)
            items.append(
                f'<div class="thumb"><img src="{_data_uri(item.png)}" alt="{e(item.title)}">'
                f"<b>{e(item.title)}</b>{lines}</div>"
            )
        return f'<p class="note">{e(block.caption)}</p><div class="gallery">{"".join(items)}</div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(doc: Document) -> str:
    """The report as one HTML page that loads nothing from outside itself."""
    e = html.escape
    toc = "".join(f'<li><a href="#{e(s.id)}">{e(s.title)}</a></li>' for s in doc.sections)
    body = []
    for s in doc.sections:
        blocks = "\n".join(_html_block(b) for b in s.blocks)
        body.append(f'<section id="{e(s.id)}"><h2>{e(s.title)}</h2>\n{blocks}\n</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{e(doc.title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f'<header><h1>{e(doc.title)}</h1><p class="subtitle">{e(doc.subtitle)}</p></header>'
        f"<nav><ol>{toc}</ol></nav>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_block(block: object, images: dict[str, bytes]) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Callout):
        mark = {"warning": "**Warning:**", "ok": "**OK:**"}.get(block.level, "**Note:**")
        return f"> {mark} {block.text}"
    if isinstance(block, Table):
        lines = []
        if block.caption:
            lines.append(f"**{block.caption}**\n")
        lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
        lines.append("|" + "---|" * len(block.header))
        for i, row in enumerate(block.rows):
            cells = [_md_cell(c) for c in row]
            if i in block.flagged and cells:
                cells[0] = f"**{cells[0]}** (flagged)"
            lines.append("| " + " | ".join(cells) + " |")
        if block.note:
            lines.append(f"\n_{block.note}_")
        return "\n".join(lines)
    if isinstance(block, Figure):
        images[block.name] = block.png
        return f"![{block.caption}](images/{block.name})\n\n_{block.caption}_"
    if isinstance(block, Gallery):
        parts = [f"_{block.caption}_\n"]
        for item in block.items:
            name = item.name or f"thumb-{len(images):04d}.png"
            images[name] = item.png
            text = "; ".join(item.lines)
            parts.append(f"- ![{item.title}](images/{name}) **{item.title}**: {text}")
        return "\n".join(parts)
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(doc: Document) -> tuple[str, dict[str, bytes]]:
    """The report as Markdown, and the images it refers to (``images/<name>``)."""
    images: dict[str, bytes] = {}
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    out.append("Contents: " + ", ".join(f"[{s.title}](#{s.id})" for s in doc.sections))
    for s in doc.sections:
        out.extend(["", f'<a id="{s.id}"></a>', f"## {s.title}", ""])
        out.append("\n\n".join(_md_block(b, images) for b in s.blocks))
    return "\n".join(out) + "\n", images


def section_text(section: Section) -> str:
    """All the text of a section (for tests and quick checks)."""
    parts: list[str] = [section.title]
    for b in section.blocks:
        if isinstance(b, (Paragraph, Callout)):
            parts.append(b.text)
        elif isinstance(b, Table):
            parts.extend([b.caption, " ".join(b.header), *(" ".join(map(str, r)) for r in b.rows), b.note])
        elif isinstance(b, Figure):
            parts.append(b.caption)
        elif isinstance(b, Gallery):
            parts.extend([b.caption, *(i.title + " " + " ".join(i.lines) for i in b.items)])
    return "\n".join(parts)
