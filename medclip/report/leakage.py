"""The report's leakage section: runs :func:`medclip.audit.leakage.audit_leakage` on the manifest and lays out
its counts, examples and thumbnail pairs (salted ids only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from .figures import pair_png

LeakagePairs = list[tuple[bytes, str, list[str]]]


def _pairs_text(pairs: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in pairs.items()) or "-"


def run_leakage_audit(
    frame: pd.DataFrame,
    *,
    images: bool = True,
    cache_dir: str | None = None,
    redact: Callable[[str], str] = lambda text: text,
    progress: bool = True,
) -> tuple[dict[str, Any], LeakagePairs]:
    """(report.json's leakage record: the audit's numbers plus summary, clean, tables and notes; the thumbnail
    pairs of near-duplicate images for the page)."""
    from medclip.audit.leakage import ManifestImages, audit_leakage, cache_images

    source: Any = None
    if images:
        source = cache_images(cache_dir) if cache_dir else ManifestImages(frame, progress=progress)
    audit = audit_leakage(frame, source, thumb_size=64)
    record: dict[str, Any] = audit.to_dict()
    p, r, im = record["patients"], record["reports"], record["images"]
    rep = record.get("repeated_images") or {"n_repeated": 0, "n_cross_split": 0, "pairs": {}, "image_ids": []}
    rows = [
        [
            "patients in more than one split (salted ids)",
            f"{p['n_in_several_splits']} of {p['n_patients']}",
            _pairs_text(p["pairs"]),
            f"{p['rows']} rows" if p["n_in_several_splits"] else "must be 0",
        ],
        [
            "one image id listed in more than one split (the same file twice)",
            f"{rep['n_cross_split']} image ids",
            _pairs_text(rep["pairs"]),
            f"{rep['n_repeated']} image ids held by several rows in all",
        ],
        [
            "identical report texts in more than one split",
            f"{r['n_cross_split']} of {r['n_texts']} distinct texts",
            _pairs_text(r["pairs"]),
            f"{r['n_templates']} template texts (held by many patients) not counted; "
            f"{r['n_within_split_other_patients']} texts repeated within one split",
        ],
    ]
    if im is None:
        rows.append(["near-duplicate images across splits", "not checked", "-", "switched off (--no-image-leakage)"])
    else:
        rows.append(
            [
                f"near-duplicate images across splits ({im.get('criterion') or im['method']})",
                f"{im['n_cross_split']} pairs ({im['n_images_cross_split']} images) of {im['n_images']} images",
                _pairs_text(im["pairs"]),
                f"{im['n_within_split']} pairs within one split"
                + (
                    f" ({im['n_within_split_other_patient']} between different patients)"
                    if im.get("n_within_split_other_patient") is not None
                    else ""
                )
                + (f"; {im['n_unreadable']} unreadable images skipped" if im.get("n_unreadable") else ""),
            ]
        )
    tables = [
        {
            "caption": "Leakage between splits",
            "header": ["check", "found", "per split pair", "note"],
            "rows": rows,
        }
    ]
    if p["patient_ids"]:
        tables.append(
            {
                "caption": "Patients in more than one split (salted ids, first 50)",
                "header": ["salted patient id"],
                "rows": [[pid] for pid in p["patient_ids"]],
            }
        )
    if rep["image_ids"] and rep["n_cross_split"]:
        tables.append(
            {
                "caption": "Image ids listed in more than one split (salted ids, first 50)",
                "header": ["salted image id"],
                "rows": [[iid] for iid in rep["image_ids"]],
            }
        )
    if r["examples"]:
        tables.append(
            {
                "caption": "Report texts found in more than one split (scrubbed excerpts)",
                "header": ["splits", "patients", "rows", "excerpt"],
                "rows": [
                    [
                        ", ".join(map(str, e.get("splits") or [])),
                        str(e.get("patients")),
                        str(e.get("rows")),
                        redact(str(e.get("excerpt", ""))),
                    ]
                    for e in r["examples"]
                ],
            }
        )
        for e in r["examples"]:
            e["excerpt"] = redact(str(e.get("excerpt", "")))
    if im is not None and im["cross_split_pairs"]:
        tables.append(
            {
                "caption": "Near-duplicate image pairs across splits (closest first, salted image ids)",
                "header": [
                    "image",
                    "split",
                    "image",
                    "split",
                    "Hamming distance",
                    "32 x 32 rank correlation",
                    "fine correlation",
                    "same patient",
                ],
                "rows": [
                    [
                        q["a"][:16],
                        q["split_a"],
                        q["b"][:16],
                        q["split_b"],
                        str(q["distance"]),
                        "-" if q.get("correlation") is None else f"{q['correlation']:.3f}",
                        "-" if q.get("fine_correlation") is None else f"{q['fine_correlation']:.3f}",
                        {True: "yes", False: "no", None: "unknown"}[q["same_patient"]],
                    ]
                    for q in im["cross_split_pairs"]
                ],
            }
        )
    found = []
    if p["n_in_several_splits"]:
        found.append(f"{p['n_in_several_splits']} patient(s) in more than one split")
    if rep["n_cross_split"]:
        found.append(f"{rep['n_cross_split']} image id(s) listed in more than one split")
    if r["n_cross_split"]:
        found.append(f"{r['n_cross_split']} report text(s) in more than one split")
    if im is not None and im["n_cross_split"]:
        found.append(f"{im['n_cross_split']} near-duplicate image pair(s) across splits")
    if found:
        summary = "Leakage audit: " + "; ".join(found) + " (see the leakage audit)."
    else:
        checked = "patients, image ids, report texts" + (" and images" if im is not None else "")
        summary = (
            "Leakage audit: no patient, image, report text or near-duplicate image shared between splits "
            f"({checked} checked)."
        )
    record.update(summary=summary, clean=audit.ok, tables=tables, notes=[])
    if im is None:
        record["notes"].append("Near-duplicate images were not checked: the report was run with --no-image-leakage.")
    pairs: LeakagePairs = []
    if audit.images is not None:
        for pair, a, b in audit.images.thumbnails:
            pairs.append(
                (
                    pair_png(a, b),
                    f"{pair.split_a} / {pair.split_b}, Hamming {pair.distance}"
                    + (
                        ""
                        if getattr(pair, "fine_correlation", None) is None
                        else f", fine correlation {pair.fine_correlation:.2f}"
                    ),
                    [
                        f"{pair.a[:12]} / {pair.b[:12]}",
                        {True: "same patient", False: "different patients", None: "patients unknown"}[
                            pair.same_patient
                        ],
                    ],
                )
            )
    return record, pairs
