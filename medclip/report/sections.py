"""The report's sections, made from the numbers in report.json (presentation only: nothing is computed here
that report.json does not hold, except the pictures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .datacard import ATTRIBUTES
from .document import Callout, Document, Figure, Gallery, GalleryItem, Paragraph, Section, Table
from .modelcard import training_rows

#: Section ids and titles, in page order.
SECTION_TITLES: dict[str, str] = {
    "summary": "Summary",
    "model-card": "Model card",
    "data-card": "Data card",
    "leakage": "Leakage audit",
    "performance": "Performance (internal test split)",
    "external": "External validation",
    "operating-points": "Operating points",
    "calibration": "Calibration",
    "subgroups": "Subgroups",
    "failures": "Failure gallery",
    "phi-scan": "PHI scan of this report",
    "checklist": "Checklist map (CLAIM 2024, TRIPOD+AI)",
    "study-information": "Study information",
}
_ATTRIBUTE_NAMES = dict(ATTRIBUTES)


def est(value: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0.812 [0.701, 0.902]``; ``n/a`` when undefined."""
    if not value or value.get("value") is None:
        return "n/a"
    text = f"{value['value']:.{digits}f}"
    if value.get("low") is not None and value.get("high") is not None:
        text += f" [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"
    return text


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100.0 * part / whole:.0f}%)" if whole else str(part)


def _not_evaluated(per_finding: Mapping[str, Mapping[str, Any]]) -> str:
    items = [f"{f} ({e['reason'].removeprefix('n/a: ')})" for f, e in per_finding.items() if e.get("reason")]
    return "not evaluated: " + "; ".join(items) if items else ""


# ---------------------------------------------------------------------------------------------- summary
def summary_section(data: Mapping[str, Any]) -> Section:
    s = Section("summary", SECTION_TITLES["summary"])
    card, perf = data["model"], data["performance"]
    internal = perf["internal"]
    s.add(
        Paragraph(
            f"Model {card.get('name')} (fingerprint {card.get('fingerprint') or 'n/a'}), evaluated zero-shot on the "
            f"{data['options']['split']!r} split of manifest {data['manifest']['name']} (SHA-256 "
            f"{data['manifest']['sha256']}); generated {data['generated_utc']} by medclip {data['medclip_version']}. "
            "Every estimate has a 95% CI from a bootstrap over patients and the n behind it."
        )
    )
    rows = [
        [
            data["options"]["split"] + " (internal)",
            str(internal["images"]),
            str(internal["patients"]),
            f"{internal['evaluated']} of {len(internal['per_finding'])}",
            "n/a" if internal["mean_auroc"] is None else f"{internal['mean_auroc']:.3f}",
        ]
    ]
    for name, ext in perf["external"].items():
        rows.append(
            [
                f"{name} (external)",
                str(ext["images"]),
                str(ext["patients"]),
                f"{ext['evaluated']} of {len(ext['per_finding'])}",
                "n/a" if ext["mean_auroc"] is None else f"{ext['mean_auroc']:.3f}",
            ]
        )
    s.add(Table(["evaluated on", "images", "patients", "findings with support", "mean AUROC"], rows))
    leak = data["leakage"].get("summary")
    if leak:
        s.add(Callout(leak, "ok" if data["leakage"].get("clean") else "warning"))
    phi = data.get("phi_scan") or {}
    if phi:
        s.add(Callout(phi.get("summary", ""), "ok" if phi.get("ok") else "warning"))
    limitations = data.get("limitations") or []
    s.add(Paragraph(f"Known limitations written from the numbers: {len(limitations)} (see the model card)."))
    s.add(Callout(card["intended_use"], "info"))
    return s


# ---------------------------------------------------------------------------------------------- model card
def model_card_section(data: Mapping[str, Any]) -> Section:
    s = Section("model-card", SECTION_TITLES["model-card"])
    card = data["model"]
    params = card.get("parameters") or {}

    def count(n: int | None) -> str:
        return "n/a" if n is None else f"{n / 1e6:.2f}M"

    rows = [
        ["name", str(card.get("name"))],
        ["model fingerprint (SHA-256 of the weights)", str(card.get("fingerprint"))],
    ]
    if card.get("kind") == "medclip":
        it, tt = card["image_tower"], card["text_tower"]
        rows += [
            ["image tower", f"{it['kind']}:{it['name']}, {it['input']}, size {it['image_size']}"],
            ["image tower weights", it["weights"]],
            [
                "text tower",
                f"{tt['name']} ({tt.get('layers')} layers, hidden {tt.get('hidden_size')}, {tt['pooling']} pooling)",
            ],
            ["text tower weights", tt["weights"]],
            ["joint embedding", str(card.get("embed_dim"))],
            [
                "parameters",
                f"image {count(params.get('image_tower'))}, text {count(params.get('text_tower'))}, total {count(params.get('total'))}",
            ],
            ["what the model sees (preprocessing)", ", ".join(f"{k} {v}" for k, v in card["preprocess"].items())],
        ]
    else:
        rows.append(["parameters", count(params.get("total"))])
    s.add(Table(["item", "value"], rows, caption="Towers"))
    if card.get("kind") == "medclip":
        s.add(Table(["item", "value"], training_rows(card.get("training") or {}), caption="Training"))
    s.add(Callout("Intended use: " + card["intended_use"], "info"))
    limitations = data.get("limitations") or []
    if limitations:
        s.add(
            Table(
                ["#", "known limitation"],
                [[str(i + 1), t] for i, t in enumerate(limitations)],
                caption="Known limitations (from the numbers of this report)",
            )
        )
    return s


# ---------------------------------------------------------------------------------------------- data card
def data_card_section(data: Mapping[str, Any]) -> Section:
    s = Section("data-card", SECTION_TITLES["data-card"])
    internal = data["data"]["internal"]
    columns: list[tuple[str, Mapping[str, Any]]] = [(name, c) for name, c in internal["splits"].items()]
    columns += [(f"{name} (external)", c["total"]) for name, c in data["data"]["external"].items()]
    header = ["", *(name for name, _ in columns)]
    rows = [
        [what, *(str(c[key]) for _, c in columns)]
        for what, key in (
            ("images", "images"),
            ("studies", "studies"),
            ("patients", "patients"),
            ("report present", "reports_present"),
            ("report missing", "reports_missing"),
        )
    ]
    s.add(
        Paragraph(
            "Counted from the manifest's de-identified columns (salted ids, sex, 10-year age bands, acquisition "
            "attributes). Splits are assigned by patient; the leakage audit below checks that they stay disjoint."
        ),
        Table(header, rows, caption="Per split: images, studies, patients, reports"),
    )
    for column, label in ATTRIBUTES:
        values = sorted({v for _, c in columns for v in (c["attributes"].get(column) or {})})
        if not values:
            continue
        if values == ["unknown"]:
            s.add(Paragraph(f"{label}: not recorded in any split."))
            continue
        attr_rows = [
            [v, *(_pct(int((c["attributes"].get(column) or {}).get(v, 0)), c["images"]) for _, c in columns)]
            for v in values
        ]
        s.add(Table([label, *header[1:]], attr_rows, caption=f"{label.capitalize()} (images)"))
    findings = data["findings"]
    label_rows = []
    for f in findings:
        cells = []
        for _, c in columns:
            lc = c["labels"].get(f) or {}
            known = lc.get("positive", 0) + lc.get("negative", 0)
            prev = f" ({100.0 * lc.get('positive', 0) / known:.0f}%)" if known else ""
            cells.append(
                f"{lc.get('positive', 0)} pos{prev} / {lc.get('negative', 0)} neg / {lc.get('uncertain', 0)} unc / "
                f"{lc.get('not_mentioned', 0)} n.m."
            )
        label_rows.append([f, *cells])
    s.add(
        Table(
            ["finding", *header[1:]],
            label_rows,
            caption="Label prevalence (positive / negative / uncertain / not mentioned in the report)",
            note="Prevalence in brackets is among images with a known (positive or negative) label.",
        )
    )
    if internal.get("sources"):
        src = internal["sources"]
        s.add(
            Table(
                ["source", "images", "studies", "patients", "report present"],
                [
                    [n, str(c["images"]), str(c["studies"]), str(c["patients"]), str(c["reports_present"])]
                    for n, c in src.items()
                ],
                caption="Per source",
            )
        )
    for w in internal.get("warnings", []):
        s.add(Callout(w))
    for name, c in data["data"]["external"].items():
        for w in c.get("warnings", []):
            s.add(Callout(f"{name}: {w}"))
    return s


# ---------------------------------------------------------------------------------------------- leakage
def leakage_section(data: Mapping[str, Any], pair_pngs: Sequence[tuple[bytes, str, list[str]]]) -> Section:
    s = Section("leakage", SECTION_TITLES["leakage"])
    leak = data["leakage"]
    if leak.get("summary"):
        s.add(Callout(leak["summary"], "ok" if leak.get("clean") else "warning"))
    for table in leak.get("tables", []):
        s.add(Table(table["header"], table["rows"], caption=table["caption"], note=table.get("note", "")))
    for note in leak.get("notes", []):
        s.add(Paragraph(note))
    if pair_pngs:
        s.add(
            Gallery(
                "Near-duplicate image pairs across splits (left and right: the two images; salted ids only)",
                [
                    GalleryItem(png, title, lines, name=f"leakage-pair-{i:03d}.png")
                    for i, (png, title, lines) in enumerate(pair_pngs)
                ],
            )
        )
    return s


# ---------------------------------------------------------------------------------------------- performance
def _performance_table(per_finding: Mapping[str, Mapping[str, Any]], caption: str) -> Table:
    rows = []
    for f, e in per_finding.items():
        if e.get("reason"):
            continue
        thr = "not calibrated" if not e.get("threshold_calibrated") else f"{e['threshold']:.3f}"
        rows.append(
            [
                f,
                f"{e['n']} ({e['patients']} patients)",
                str(e["positives"]),
                est(e.get("auroc")),
                est(e.get("auprc")),
                thr,
                est(e.get("sensitivity")) if e.get("sensitivity") else "-",
                est(e.get("specificity")) if e.get("specificity") else "-",
            ]
        )
    return Table(
        ["finding", "n images", "positives", "AUROC", "AUPRC", "flags at p >=", "sensitivity", "specificity"],
        rows,
        caption=caption,
        note=_not_evaluated(per_finding),
    )


def performance_section(data: Mapping[str, Any]) -> Section:
    s = Section("performance", SECTION_TITLES["performance"])
    internal = data["performance"]["internal"]
    s.add(
        _performance_table(
            internal["per_finding"],
            f"Zero-shot diagnosis on the {data['options']['split']!r} split ({internal['images']} images, "
            f"{internal['patients']} patients); sensitivity and specificity at the validation operating point",
        )
    )
    if not internal["evaluated"]:
        s.add(
            Callout(
                f"No finding has {data['options']['min_support']} positives and negatives in this split: no estimate is shown."
            )
        )
    other = data["performance"].get("other") or {}
    retrieval = other.get("retrieval") or {}
    if retrieval.get("image_to_report"):
        rows = [
            [
                d.replace("_", " "),
                *(f"{retrieval[d][k]:.3f}" for k in ("R@1", "R@5", "R@10")),
                str(retrieval[d]["n_queries"]),
            ]
            for d in ("image_to_report", "report_to_image")
        ]
        s.add(
            Table(
                ["direction", "R@1", "R@5", "R@10", "queries"],
                rows,
                caption=f"Image-report retrieval, study level ({retrieval.get('n_studies')} studies; chance R@10 "
                f"{retrieval.get('chance_R@10', float('nan')):.3f}); {other.get('source', '')}",
            )
        )
    elif retrieval.get("skipped"):
        s.add(Paragraph(f"Retrieval not computed: {retrieval['skipped']}"))
    drafting = other.get("drafting") or {}
    if drafting.get("macro_f1") is not None:
        rows = [["retrieval draft", f"{drafting['macro_f1']:.3f}", f"{drafting['micro_f1']:.3f}"]]
        for key, label in (("nearest_report", "nearest training report"), ("random_report", "random training report")):
            if drafting.get(key):
                rows.append([label, f"{drafting[key]['macro_f1']:.3f}", f"{drafting[key]['micro_f1']:.3f}"])
        s.add(
            Table(
                ["report drafting", "labeler macro F1", "labeler micro F1"],
                rows,
                caption=f"Drafted reports scored by the findings they state ({drafting.get('n_reports')} reports)",
            )
        )
    elif drafting.get("skipped"):
        s.add(Paragraph(f"Report drafting not scored: {drafting['skipped']}"))
    return s


def external_section(data: Mapping[str, Any]) -> Section:
    s = Section("external", SECTION_TITLES["external"])
    perf = data["performance"]
    if not perf["external"]:
        s.add(
            Callout("No external manifest was given (--external): external validation is not covered by this report.")
        )
        return s
    names = list(perf["external"])
    internal = perf["internal"]["per_finding"]
    rows = []
    flagged = set()
    for f in data["findings"]:
        cells = []
        for per in [internal, *(perf["external"][n]["per_finding"] for n in names)]:
            e = per.get(f) or {}
            cells.append(
                e["reason"] if e.get("reason") else f"{est(e.get('auroc'))} (n {e.get('n')}, {e.get('positives')} pos)"
            )
        rows.append([f, *cells])
        ref = (internal.get(f) or {}).get("auroc") or {}
        for n in names:
            ext = (perf["external"][n]["per_finding"].get(f) or {}).get("auroc") or {}
            if ref.get("value") is not None and ext.get("high") is not None and ext["high"] < ref["value"]:
                flagged.add(len(rows) - 1)
    s.add(
        Table(
            ["finding", "internal test AUROC", *(f"{n} AUROC" for n in names)],
            rows,
            caption="AUROC side by side: internal test split vs each external manifest",
            note="Highlighted: an external CI lying wholly below the internal point estimate (a shift).",
            flagged=flagged,
        )
    )
    for n in names:
        s.add(_performance_table(perf["external"][n]["per_finding"], f"{n}: every row of the external manifest"))
    return s


def operating_points_section(data: Mapping[str, Any]) -> Section:
    s = Section("operating-points", SECTION_TITLES["operating-points"])
    ops = data.get("operating_points") or {}
    if not ops.get("findings"):
        s.add(Callout(ops.get("note") or "No operating points: run medclip eval --save-to-checkpoint."))
        return s
    if ops.get("note"):
        s.add(Callout(ops["note"]))
    rows = []
    for f, p in ops["findings"].items():
        status = "calibrated" if p.get("calibrated") else f"not calibrated: {p.get('reason') or 'no reason recorded'}"
        rows.append(
            [
                f,
                status,
                "-" if not p.get("calibrated") else f"{p['threshold']:.3f}",
                str(p.get("method")),
                f"{p.get('n', '-')} / {p.get('positives', '-')}",
                est(p.get("auroc")),
                est(p.get("sensitivity")) if p.get("sensitivity") else "-",
                est(p.get("specificity")) if p.get("specificity") else "-",
                ("yes" if p.get("can_raise_priority") else "no")
                + (f": {p['priority_reason']}" if p.get("priority_reason") else ""),
            ]
        )
    s.add(
        Table(
            [
                "finding",
                "status",
                "flags at p >=",
                "method",
                "validation n / positives",
                "validation AUROC",
                "validation sensitivity",
                "validation specificity",
                "may raise triage priority",
            ],
            rows,
            caption=f"From thresholds.json (criterion {ops.get('criterion')}, validation split {ops.get('validation_split')!r})",
        )
    )
    return s


def calibration_section(data: Mapping[str, Any], figures: Sequence[Figure]) -> Section:
    s = Section("calibration", SECTION_TITLES["calibration"])
    s.add(
        Paragraph(
            "Expected calibration error (ECE, 10 equal-width bins) and Brier score of the zero-shot probabilities, "
            "with patient-bootstrap CIs. A well calibrated model's reliability curve follows the diagonal."
        )
    )
    sets = [
        ("internal test", data["performance"]["internal"]),
        *((n, e) for n, e in data["performance"]["external"].items()),
    ]
    rows = []
    for name, perf in sets:
        for f, e in perf["per_finding"].items():
            if e.get("reason"):
                continue
            rows.append([name, f, str(e["n"]), est(e.get("ece")), est(e.get("brier"))])
    s.add(Table(["evaluated on", "finding", "n", "ECE", "Brier"], rows, caption="Calibration per finding"))
    for fig in figures:
        s.add(fig)
    return s


def subgroups_section(data: Mapping[str, Any]) -> Section:
    s = Section("subgroups", SECTION_TITLES["subgroups"])
    s.add(
        Paragraph(
            "Every headline metric per subgroup, with its 95% patient-bootstrap CI and the n behind it. A cell is "
            "flagged when its CI lies wholly below the overall point estimate of the same set."
        )
    )
    for set_name, sub in data["subgroups"].items():
        overall = (
            data["performance"]["internal"]
            if set_name == "internal test"
            else data["performance"]["external"][set_name]
        )["per_finding"]
        shown = [f for f, e in overall.items() if not e.get("reason")]
        for column, groups in sub["attributes"].items():
            label = _ATTRIBUTE_NAMES.get(column, column)
            rows, flagged = [], set()
            for value, g in groups.items():
                cells = []
                for f in shown:
                    c = g["findings"][f]
                    cells.append(
                        c["reason"] if c.get("reason") else f"{est(c.get('auroc'))} (n {c['n']}, {c['positives']} pos)"
                    )
                mean = "n/a" if g["mean_auroc"] is None else f"{g['mean_auroc']:.3f}"
                rows.append([value, str(g["images"]), str(g["patients"]), mean, *cells, ", ".join(g["flagged"]) or "-"])
                if g["flagged"]:
                    flagged.add(len(rows) - 1)
            s.add(
                Table(
                    [label, "images", "patients", "mean AUROC", *(f"{f} AUROC" for f in shown), "flagged"],
                    rows,
                    caption=f"{set_name}: by {label}",
                    flagged=flagged,
                )
            )
            calibrated = [f for f in shown if overall[f].get("sensitivity")]
            if calibrated:
                op_rows = []
                for value, g in groups.items():
                    cells = []
                    for f in calibrated:
                        c = g["findings"][f]
                        cells.append(
                            c["reason"]
                            if c.get("reason")
                            else f"sens {est(c.get('sensitivity'), 2)}; spec {est(c.get('specificity'), 2)}"
                        )
                    op_rows.append([value, *cells])
                s.add(
                    Table(
                        [label, *calibrated],
                        op_rows,
                        caption=f"{set_name}: sensitivity and specificity at the operating point, by {label}",
                    )
                )
        for column, why in sub["not_broken_down"].items():
            s.add(Paragraph(f"{set_name}: not broken down by {_ATTRIBUTE_NAMES.get(column, column)}: {why}."))
        if not shown:
            s.add(Callout(f"{set_name}: no finding has enough support overall, so no subgroup estimate is shown."))
    return s


def failures_section(data: Mapping[str, Any], galleries: Sequence[Gallery]) -> Section:
    s = Section("failures", SECTION_TITLES["failures"])
    s.add(
        Paragraph(
            "The most confident errors on the internal test split, per finding: false positives (label negative, "
            "highest probability) and false negatives (label positive, lowest probability). Thumbnails are what the "
            "model sees; ids are salted hashes; report excerpts are scrubbed of identifiers."
        )
    )
    if not galleries:
        s.add(Callout(data["failures"].get("note") or "No finding has both positives and negatives in the test split."))
    for g in galleries:
        s.add(g)
    return s


def phi_section(data: Mapping[str, Any]) -> Section:
    s = Section("phi-scan", SECTION_TITLES["phi-scan"])
    phi = data.get("phi_scan") or {}
    s.add(
        Paragraph(
            "Every file this command wrote was decoded (HTML, Markdown, JSON, PNG text chunks) and searched for the "
            "identifier values it could check, and for identifier patterns (dates, e-mail addresses, phone numbers, "
            "long ID numbers). Values are never printed; a hit names the file and the kind of value."
        )
    )
    if phi:
        s.add(Callout(phi.get("summary", ""), "ok" if phi.get("ok") else "warning"))
        rows = [[k, str(v)] for k, v in (phi.get("checked") or {}).items()]
        if rows:
            s.add(Table(["checked", "count"], rows))
        hits = phi.get("hits") or []
        if hits:
            s.add(
                Table(["file", "where", "kind"], [[h["file"], h["location"], h["kind"]] for h in hits], caption="Hits")
            )
    return s


def checklist_section(data: Mapping[str, Any]) -> Section:
    s = Section("checklist", SECTION_TITLES["checklist"])
    items = data["checklist"]
    covered = sum(1 for i in items if i["status"] != "missing")
    s.add(
        Paragraph(
            f"{covered} of {len(items)} items are answered: by a section of this report or by the study information "
            "(study.yaml, --study-info). Items are named by their wording in CLAIM 2024 and TRIPOD+AI. Missing items "
            "name the study.yaml key to fill."
        )
    )
    rows = [[i["checklist"], i["item"], SECTION_TITLES.get(i["where"], i["where"]), i["status"]] for i in items]
    s.add(
        Table(
            ["checklist", "item", "answered in", "status"],
            rows,
            flagged={k for k, i in enumerate(items) if i["status"] == "missing"},
        )
    )
    return s


def study_information_section(data: Mapping[str, Any]) -> Section:
    from .checklist import STUDY_INFO_KEYS

    s = Section("study-information", SECTION_TITLES["study-information"])
    info = data.get("study_information") or {}
    if info:
        s.add(Table(["item", "as written by the researchers"], [[k, v] for k, v in info.items()]))
    missing = [k for k in STUDY_INFO_KEYS if k not in info]
    if missing:
        s.add(
            Callout(
                "Not given (write them in a YAML file and pass --study-info study.yaml): "
                + "; ".join(f"{k}: {STUDY_INFO_KEYS[k]}" for k in missing),
                "info",
            )
        )
    return s


def build_document(
    data: Mapping[str, Any],
    *,
    calibration_figures: Sequence[Figure],
    failure_galleries: Sequence[Gallery],
    leakage_pairs: Sequence[tuple[bytes, str, list[str]]],
) -> Document:
    """The whole report as a document, from report.json's content and the pictures."""
    sections = [
        summary_section(data),
        model_card_section(data),
        data_card_section(data),
        leakage_section(data, leakage_pairs),
        performance_section(data),
        external_section(data),
        operating_points_section(data),
        calibration_section(data, calibration_figures),
        subgroups_section(data),
        failures_section(data, failure_galleries),
        phi_section(data),
        checklist_section(data),
        study_information_section(data),
    ]
    return Document(
        title=f"medclip report: {data['model'].get('name')} on {data['manifest']['name']}",
        subtitle=f"Generated {data['generated_utc']} by medclip {data['medclip_version']}. Research use only: not a medical device.",
        sections=sections,
    )
