"""HTML fragments for the demo page (pure functions, no Gradio): findings, priority, similar studies, header.

Every text that reaches the page goes through :func:`html.escape`; thumbnails are inlined as
base64 PNG so that no file path is ever served.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .gallery import GalleryMatch
from .triage import FindingResult, TriagePriority

__all__ = ["NOTICE", "render_error", "render_findings", "render_header", "render_priority", "render_similar"]

#: Shown on every page: the demo is a research tool.
NOTICE = (
    "RESEARCH USE ONLY - NOT FOR DIAGNOSIS. Outputs come from a research model and have not been "
    "validated for clinical use; a qualified clinician must read every study."
)

_STATUS_STYLE = {"positive": "#b42318", "uncertain": "#b54708", "negative": "#475467", "not calibrated": "#98a2b3"}
_PRIORITY_STYLE = {"urgent": "#b42318", "priority": "#b54708", "routine": "#027a48", "not calibrated": "#98a2b3"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_priority(priority: TriagePriority) -> str:
    """A coloured banner: URGENT / PRIORITY / ROUTINE with the findings that set it."""
    colour = _PRIORITY_STYLE.get(priority.level, "#475467")
    parts = [
        f"<div id='triage-priority' data-level='{_e(priority.level)}' style='border-left:6px solid {colour};"
        f"padding:8px 12px;margin:4px 0'><b style='color:{colour};font-size:1.2em'>"
        f"Triage priority: {_e(priority.level.upper())}</b>"
    ]
    if priority.reasons:
        parts.append(f"<br>because of: {_e(', '.join(priority.reasons))}")
    if priority.review:
        parts.append(f"<br>review (uncertain): {_e(', '.join(priority.review))}")
    if priority.level == "not calibrated":
        parts.append(
            "<br>no finding has an operating point that may set the priority (calibrated on enough validation "
            "positives and negatives, not degenerate, validation AUROC CI above the floor), so none sets it"
        )
    if priority.not_calibrated:
        parts.append(
            f"<br><span class='not-calibrated'>not calibrated, cannot set the priority: "
            f"{_e(', '.join(priority.not_calibrated))}</span>"
        )
    if priority.cannot_raise:
        parts.append(
            f"<br><span class='cannot-raise'>calibrated, but validation AUROC too uncertain to set the priority: "
            f"{_e(', '.join(priority.cannot_raise))}</span>"
        )
    parts.append("</div>")
    return "".join(parts)


def _card(result: FindingResult) -> str:
    card = result.card
    if card is None:
        return ""
    rows = []
    if card.definition:
        rows.append(f"<p><b>Definition.</b> {_e(card.definition)}</p>")
    if card.synonyms:
        rows.append(f"<p><b>Synonyms.</b> {_e('; '.join(card.synonyms))}</p>")
    if card.appearance:
        rows.append(f"<p><b>Typical appearance.</b> {_e(' '.join(card.appearance))}</p>")
    if card.sources:
        rows.append(f"<p style='font-size:0.85em'><b>Source.</b> {_e('; '.join(card.sources))}</p>")
    return f"<details class='concept-card'><summary>about {_e(card.name)}</summary>{''.join(rows)}</details>"


def _number(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{float(value):.2f}"


def _ci(estimate: Mapping[str, Any] | None) -> str:
    """``0.81 (0.66&ndash;0.93)`` of a stored estimate (value with its 95% CI)."""
    if not estimate or estimate.get("value") is None:
        return "n/a"
    if estimate.get("low") is None or estimate.get("high") is None:
        return f"{_number(estimate.get('value'))} (no CI)"
    return f"{_number(estimate['value'])} ({_number(estimate['low'])}&ndash;{_number(estimate['high'])})"


def _operating_point(result: FindingResult) -> str:
    """In a clinician's units: the probability at which the finding is flagged, the uncertain band, and the
    validation sensitivity / specificity there with their 95% CIs; or "not calibrated" with the reason."""
    point = result.point
    if not result.calibrated:
        reason = point.reason if point is not None and point.reason else "no operating point"
        return f"<span class='not-calibrated'>not calibrated</span><br><small class='reason'>{_e(reason)}</small>"
    t, m = result.threshold, result.margin
    parts = [
        f"flags at probability &ge; {t:.2f}",
        f"<small>positive from {min(t + m, 1.0):.2f}, uncertain {max(t - m, 0.0):.2f}&ndash;{min(t + m, 1.0):.2f}</small>",
    ]
    if point is None or point.method not in ("youden", "f1"):
        parts.append("<small>(set by hand, not validated)</small>")
    else:
        parts.append(
            f"<small>validation sensitivity {_ci(point.sensitivity)}, specificity {_ci(point.specificity)}"
            + (f"; flags {point.flag_rate:.0%} of validation images" if point.flag_rate is not None else "")
            + "</small>"
        )
    return "<br>".join(parts)


def _priority_rule(result: FindingResult) -> str:
    """Whether the finding may set the triage priority, and why."""
    point = result.point
    if not result.calibrated:
        return "no<br><small>not calibrated</small>"
    why = point.priority_reason if point is not None and point.priority_reason else ""
    answer = "yes" if result.can_raise_priority else "no"
    return answer + (f"<br><small>{_e(why)}</small>" if why else "")


def _validation(result: FindingResult) -> str:
    """The validation AUROC with its 95% CI, and the validation size and positives the point was chosen on."""
    point = result.point
    if point is None or (point.auroc is None and point.n is None):
        return "n/a"
    parts = []
    if point.auroc is not None:
        auroc = point.auroc
        parts.append(
            f"AUROC {_number(auroc.get('value'))} ({_number(auroc.get('low'))}&ndash;{_number(auroc.get('high'))})"
        )
    if point.n is not None:
        negatives = f", {point.n_negatives} neg" if point.n_negatives is not None else ""
        parts.append(f"<small>n {point.n}, {point.positives} pos{negatives}</small>")
    return "<br>".join(parts)


def render_findings(results: Sequence[FindingResult]) -> str:
    """The ranked findings table: probability bar, operating point (or "not calibrated" with the reason),
    validation AUROC, whether it may set the priority and why, status, urgency flag and card."""
    head = (
        "<table id='ranked-findings' style='width:100%;border-collapse:collapse'><thead><tr>"
        "<th style='text-align:left'>#</th><th style='text-align:left'>Finding</th>"
        "<th style='text-align:left'>Probability</th><th style='text-align:left'>Operating point</th>"
        "<th style='text-align:left'>Validation AUROC (95% CI)</th>"
        "<th style='text-align:left'>Can set priority</th>"
        "<th style='text-align:left'>Status</th></tr></thead><tbody>"
    )
    rows = []
    for i, r in enumerate(results, 1):
        colour = _STATUS_STYLE.get(r.status, "#475467")
        if r.concept_id == "no_finding" and r.status == "positive":
            colour = "#027a48"  # a normal study is good news
        flag = " <span title='urgent finding' style='color:#b42318'>&#9888; urgent</span>" if r.flagged else ""
        bar = (
            f"<div style='background:#eaecf0;width:120px;height:8px;display:inline-block;margin-right:6px'>"
            f"<div style='background:{colour};width:{max(0.0, min(1.0, r.probability)) * 120:.0f}px;height:8px'></div></div>"
        )
        rows.append(
            f"<tr class='finding' data-concept='{_e(r.concept_id)}' data-status='{_e(r.status)}' "
            f"data-can-raise-priority='{'true' if r.can_raise_priority else 'false'}' "
            f"style='border-top:1px solid #eaecf0'><td>{i}</td><td><b>{_e(r.name)}</b>{flag}{_card(r)}</td>"
            f"<td>{bar}{r.probability:.2f}</td>"
            f"<td class='operating-point'>{_operating_point(r)}</td>"
            f"<td class='validation'>{_validation(r)}</td>"
            f"<td class='priority-rule'>{_priority_rule(r)}</td>"
            f"<td class='status' style='color:{colour};font-weight:bold'>{_e(r.status)}</td></tr>"
        )
    return head + "".join(rows) + "</tbody></table>"


def _thumbnail_tag(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='reference study' src='data:image/png;base64,{data}' style='max-width:120px;max-height:120px'>"


def render_similar(matches: Sequence[GalleryMatch], note: str = "") -> str:
    """The most similar reference studies with their reports (or the note saying why there are none)."""
    if not matches:
        return f"<p id='similar-studies'><i>{_e(note or 'No reference gallery loaded.')}</i></p>"
    rows = []
    for m in matches:
        rows.append(
            f"<div class='similar-study' style='display:flex;gap:10px;margin:6px 0;border-top:1px solid #eaecf0;"
            f"padding-top:6px'>{_thumbnail_tag(m.thumbnail)}<div><b>#{m.rank}</b> similarity {m.score:.2f}"
            f" &middot; study {_e(m.study_id[:8])} {_e(m.view_position)}<br><span>{_e(m.report)}</span></div></div>"
        )
    return "<div id='similar-studies'>" + "".join(rows) + "</div>"


def render_header(header: Mapping[str, Any]) -> str:
    """The de-identified header as a two-column table (ids are salted hashes)."""
    if not header:
        return "<p id='dicom-header'><i>no header</i></p>"
    rows = "".join(f"<tr><td style='padding-right:12px'>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in header.items())
    return (
        "<table id='dicom-header' style='font-size:0.9em'>" + rows + "</table>"
        "<p style='font-size:0.8em'>De-identified: names, birth dates, IDs, accession numbers, dates and "
        "institutions are never read; identifiers are salted hashes.</p>"
    )


def render_error(message: str) -> str:
    """A visible error box (the app keeps serving)."""
    return f"<div id='upload-error' role='alert' style='color:#b42318;font-weight:bold'>&#10060; {_e(message)}</div>"
