"""``build_report``: from a checkpoint and a manifest to ``index.html``, ``report.md`` and ``report.json``.

Steps (each logged with its number, long ones with a progress bar): load the model and manifest and
check that the manifest's labels are this model's findings; the data card; the leakage audit; the
zero-shot probabilities of the test split and of each external manifest (reused from
``<checkpoint>/eval/scores/`` when they were computed for this model, manifest, finding list and
prompt style); performance, calibration, subgroups; retrieval and drafting (reused from
``medclip eval``'s ``metrics.json`` when it was written for this model and manifest, else computed);
the failure gallery; the model card; write the three files; scan them for PHI.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medclip.checkpoint import CheckpointDir, StaleFileError
from medclip.data.manifest import LABEL_PREFIX, label_columns, read_manifest
from medclip.data.storage import content_fingerprint
from medclip.eval.runner import METRICS_FILE, EmbeddedSplit, EvalOptions, Evaluator, jsonable
from medclip.eval.scores import load_scores, save_scores, scores_path
from medclip.fsutil import atomic_write
from medclip.inference.encoders import load_model

from .checklist import checklist, load_study_info
from .datacard import MIN_SUPPORT, data_card
from .document import Figure, Gallery, GalleryItem
from .figures import png_bytes, reliability_png
from .leakage import run_leakage_audit
from .modelcard import model_card
from .performance import ScoredSet, Threshold, finding_metrics, mean_auroc, subgroup_metrics
from .render import render_html, render_markdown
from .sections import SECTION_TITLES, build_document

log = logging.getLogger(__name__)

REPORT_FORMAT = "medclip.report"
REPORT_VERSION = 1
HTML_FILE, MARKDOWN_FILE, JSON_FILE, IMAGES_DIR = "index.html", "report.md", "report.json", "images"
_EXCERPT_CHARS = 220


class ReportError(ValueError):
    """A report that cannot be made from these inputs (the message says which file and why)."""


@dataclass
class ReportOptions:
    """Settings of :func:`build_report` (``medclip report``'s options)."""

    split: str = "test"
    val_split: str = "val"
    train_split: str = "train"
    findings: list[str] | None = None
    unmentioned_as_negative: bool = False
    style: str = "ensemble"
    n_boot: int = 1000
    seed: int = 0
    min_support: int = MIN_SUPPORT
    failures_per_finding: int = 3
    batch_size: int = 32
    num_workers: int = 0
    device: str = "cpu"
    leakage_images: bool = True  # near-duplicate search over every image (decodes them all once)
    cache_dir: str | None = None  # read the leakage audit's images from this cache instead of the files
    study_info: str | None = None
    phi_values: str | None = None  # a text file of extra identifier values to scan for, one per line
    progress: bool = True  # step lines and progress bars on stderr
    reuse: bool = True  # reuse eval's metrics.json and saved scores when they fit
    eval_dir: str | None = None  # medclip eval's output folder to reuse (default: <checkpoint>/eval)


@dataclass
class ReportResult:
    """Where the report was written and what its PHI scan found."""

    output_dir: Path
    html: Path
    markdown: Path
    json: Path
    phi_ok: bool
    data: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        internal = self.data["performance"]["internal"]
        mean = internal["mean_auroc"]
        lines = [
            f"report: {self.html}",
            f"  also {self.markdown.name} and {self.json.name} in {self.output_dir}",
            f"  internal {self.data['options']['split']} split: {internal['images']} images, {internal['patients']} "
            f"patients, {internal['evaluated']} finding(s) with support, mean AUROC "
            + ("n/a" if mean is None else f"{mean:.3f}"),
            f"  leakage: {self.data['leakage'].get('summary', 'n/a')}",
            f"  PHI scan: {self.data['phi_scan']['summary']}",
        ]
        return "\n".join(lines)


class _Steps:
    """Numbered step lines on stderr (beside the progress bars), or DEBUG log records when quiet."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.done, self.start, self.show = total, 0, time.time(), show

    def __call__(self, what: str) -> None:
        self.done += 1
        line = f"report {self.done}/{self.total}: {what} ({time.time() - self.start:.0f} s so far)"
        if self.show:
            print(line, file=sys.stderr, flush=True)
        else:
            log.debug("%s", line)


# ---------------------------------------------------------------------------------------------- inputs
def _expected_findings(ckpt: CheckpointDir, fingerprint: str | None, eval_dir: Path) -> tuple[list[str], str]:
    """The findings this model was calibrated or evaluated on, and where that list comes from."""
    from medclip.inference.thresholds import load_thresholds

    try:
        names = list(load_thresholds(ckpt.path)) if ckpt.path.is_dir() else []
    except (OSError, ValueError):
        names = []
    if names:
        return names, str(ckpt.thresholds)
    metrics = eval_dir / METRICS_FILE
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
            if fingerprint is None or data.get("model_fingerprint") in (None, fingerprint):
                names = list((data.get("zeroshot") or {}).get("findings") or [])
                if names:
                    return names, str(metrics)
        except (OSError, ValueError):
            pass
    return [], ""


def _check_labels(frame: pd.DataFrame, where: str, expected: Sequence[str], expected_from: str) -> list[str]:
    present = [c[len(LABEL_PREFIX) :] for c in label_columns(frame)]
    if not present:
        raise ReportError(
            f"{where}: no label.<finding> columns, so nothing can be scored; label the reports first: "
            f"medclip label {where}"
        )
    if expected and not set(expected) & set(present):
        raise ReportError(
            f"{where}: its label columns ({', '.join(present[:12])}{', ...' if len(present) > 12 else ''}) share no "
            f"finding with this model's ({', '.join(list(expected)[:12])}, from {expected_from}): a manifest labelled "
            "for another model or label set? Relabel it with `medclip label`, or choose findings with --findings"
        )
    return present


def _operating_points(ckpt: CheckpointDir, fingerprint: str | None) -> tuple[dict[str, Threshold], dict[str, Any]]:
    """Thresholds for the report and the operating-point record for report.json."""
    from medclip.inference.thresholds import load_operating_points

    if not ckpt.path.is_dir():
        return {}, {"note": "the model is not a checkpoint folder: no thresholds.json"}
    try:
        points = load_operating_points(ckpt.path, fingerprint)
    except StaleFileError as exc:
        return {}, {"note": f"thresholds.json not used: {exc}"}
    except (ValueError, OSError) as exc:
        return {}, {"note": f"thresholds.json not readable: {exc}"}
    if points is None:
        return {}, {
            "note": f"no operating points: run `medclip eval --checkpoint {ckpt.path} --manifest M --save-to-checkpoint`"
        }
    thresholds = {cid: Threshold(p.threshold, p.calibrated, p.method, p.reason) for cid, p in points.points.items()}
    findings_record: dict[str, Any] = {}
    record: dict[str, Any] = {
        "criterion": points.criterion,
        "validation_split": (points.validation or {}).get("split"),
        "uncertain_margin": points.uncertain_margin,
        "findings": findings_record,
    }
    for cid, p in points.points.items():
        entry = p.to_dict()
        entry["calibrated"] = p.calibrated
        findings_record[cid] = entry
    return thresholds, record


# ---------------------------------------------------------------------------------------------- scoring
def _scored(
    evaluator: Evaluator,
    split: str,
    name: str,
    findings: list[str],
    *,
    cache_dir: Path | None,
    fingerprint: str | None,
    manifest_sha: str,
    opt: ReportOptions,
    classifier: Any,
) -> tuple[ScoredSet, bool]:
    """The split's probabilities (reused from the scores cache when they fit) and whether they were reused."""
    frame = evaluator.frame[evaluator.frame["split"] == split].reset_index(drop=True)
    if frame.empty:
        have = sorted(evaluator.frame["split"].dropna().unique())
        raise ReportError(f"{evaluator._where()}: no rows in split {split!r} (splits present: {have})")
    path = scores_path(cache_dir, manifest_sha, split) if cache_dir is not None else None
    probs = None
    if path is not None and opt.reuse:
        probs = load_scores(
            path,
            frame["image_id"].tolist(),
            findings,
            model_fingerprint=fingerprint,
            manifest_sha256=manifest_sha,
            style=opt.style,
        )
    reused = probs is not None
    if probs is None:
        embedded = evaluator.split(split)
        frame = embedded.frame
        probs = np.asarray(classifier.predict_proba(embedded.image_features), dtype=np.float64)
        if path is not None and fingerprint is not None:
            try:
                save_scores(
                    path,
                    frame["image_id"].tolist(),
                    probs,
                    findings,
                    model_fingerprint=fingerprint,
                    manifest_sha256=manifest_sha,
                    style=opt.style,
                )
            except OSError as exc:  # a read-only checkpoint folder: the report still goes on
                log.warning("could not keep the scores for reuse (%s)", exc)
    labels = EmbeddedSplit(frame, torch.empty(0)).labels(findings, opt.unmentioned_as_negative)
    return ScoredSet(name, frame, findings, labels, probs), reused


def _performance_record(scored: ScoredSet, thresholds: Mapping[str, Threshold], opt: ReportOptions) -> dict[str, Any]:
    per = finding_metrics(scored, thresholds, n_boot=opt.n_boot, seed=opt.seed, min_support=opt.min_support)
    evaluated = sum(1 for e in per.values() if not e.get("reason"))
    mean = mean_auroc(per)
    return {
        "images": len(scored.frame),
        "patients": int(scored.frame["patient_id"].nunique()),
        "per_finding": per,
        "evaluated": evaluated,
        "mean_auroc": None if math.isnan(mean) else mean,
    }


def _other_tasks(
    ckpt: CheckpointDir, fingerprint: str | None, manifest_sha: str, evaluator: Evaluator, opt: ReportOptions
) -> dict[str, Any]:
    """Retrieval and drafting: from eval's metrics.json when it was written for this model, manifest and split,
    else computed here (nothing is written into the checkpoint)."""
    metrics_file = (Path(opt.eval_dir) if opt.eval_dir else ckpt.eval_dir) / METRICS_FILE
    if opt.reuse and fingerprint and metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        fits = (
            metrics.get("model_fingerprint") == fingerprint
            and metrics.get("manifest_sha256") == manifest_sha
            and (metrics.get("options") or {}).get("split") == opt.split
        )
        if fits and ("retrieval" in metrics or "report" in metrics):
            return {
                "retrieval": metrics.get("retrieval") or {"skipped": "not in medclip eval's metrics.json"},
                "drafting": metrics.get("report") or {"skipped": "not in medclip eval's metrics.json"},
                "source": f"reused from {metrics_file.name} of medclip eval (same model and manifest)",
            }
    out: dict[str, Any] = {"source": "computed by medclip report"}
    try:
        out["retrieval"] = evaluator.run_retrieval()
    except ValueError as exc:
        out["retrieval"] = {"skipped": str(exc)}
    try:
        drafting = evaluator.run_report(examples=0)
        drafting.pop("per_finding", None)
        out["drafting"] = drafting
    except (ValueError, ImportError) as exc:
        out["drafting"] = {"skipped": str(exc)}
    return out


# ---------------------------------------------------------------------------------------------- failures
class Redactor:
    """Removes identifiers from text the report shows: the known values (header PHI, user list) and the
    identifier patterns of :func:`medclip.data.reports.scrub_identifiers`."""

    def __init__(self, values: Sequence[str] = ()) -> None:
        self.values = tuple(v for v in values if v and len(str(v)) >= 3)

    def __call__(self, text: str) -> str:
        from medclip.data.reports import scrub_identifiers

        return scrub_identifiers(text or "", known=self.values)


def _excerpt(row: Mapping[str, Any], redact: Redactor) -> str:
    for col in ("report_impression", "report_findings", "report_text"):
        text = str(row.get(col) or "").strip()
        if text and text.lower() != "nan":
            text = " ".join(redact(text).split())
            return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3].rstrip() + "..."
    return "(no report)"


def _failures(
    evaluator: Evaluator,
    scored: ScoredSet,
    thresholds: Mapping[str, Threshold],
    opt: ReportOptions,
    redact: Redactor,
) -> tuple[dict[str, Any], list[Gallery]]:
    record: dict[str, Any] = {"per_finding": {}}
    galleries: list[Gallery] = []
    k = opt.failures_per_finding
    if k <= 0:
        record["note"] = "failure gallery switched off (--failures 0)"
        return record, galleries
    picks: dict[str, dict[str, list[int]]] = {}
    for j, f in enumerate(scored.findings):
        y, p = scored.labels[:, j], scored.probs[:, j]
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        if not len(neg) or not len(pos):
            continue
        picks[f] = {
            "false_positives": neg[np.argsort(-p[neg], kind="stable")][:k].tolist(),
            "false_negatives": pos[np.argsort(p[pos], kind="stable")][:k].tolist(),
        }
    rows = sorted({i for v in picks.values() for idx in v.values() for i in idx})
    if not rows:
        record["note"] = "no finding has both positives and negatives in the test split"
        return record, galleries
    dataset = evaluator.dataset(scored.frame.iloc[rows].reset_index(drop=True))
    thumbs: dict[int, bytes] = {}
    for pos_in_subset, row in enumerate(rows):
        try:
            thumbs[row] = png_bytes(dataset[pos_in_subset]["image"])
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not lose the report
            log.warning(
                "failure gallery: image %s not shown (%s)", scored.frame.at[row, "image_id"], type(exc).__name__
            )
    for f, kinds in picks.items():
        j = scored.findings.index(f)
        t = thresholds.get(f)
        record["per_finding"][f] = {}
        for kind, idx in kinds.items():
            items: list[GalleryItem] = []
            entries: list[dict[str, Any]] = []
            for i in idx:
                row = scored.frame.iloc[i].to_dict()
                prob = float(scored.probs[i, j])
                image_id = str(row["image_id"])[:16]
                excerpt = _excerpt(row, redact)
                wrong = (
                    None
                    if t is None or not t.calibrated
                    else (prob >= t.value if kind == "false_positives" else prob < t.value)
                )
                entries.append(
                    {
                        "image_id": image_id,
                        "probability": prob,
                        "label": int(scored.labels[i, j]),
                        "flagged_wrongly": wrong,
                        "excerpt": excerpt,
                    }
                )
                if i in thumbs:
                    label = "negative" if kind == "false_positives" else "positive"
                    status = ""
                    if wrong is not None and kind == "false_positives":
                        status = (
                            " (flagged at the operating point)" if wrong else " (not flagged at the operating point)"
                        )
                    elif wrong is not None:
                        status = " (missed at the operating point)" if wrong else " (flagged at the operating point)"
                    items.append(
                        GalleryItem(
                            thumbs[i],
                            f"p = {prob:.3f}, label {label}{status}",
                            [f"image {image_id}", f"report: {excerpt}"],
                            name=f"failure-{f}-{kind}-{len(items)}.png",
                        )
                    )
            record["per_finding"][f][kind] = entries
            if items:
                what = (
                    "most confident false positives" if kind == "false_positives" else "most confident false negatives"
                )
                galleries.append(Gallery(f"{f}: {what}", items))
    return record, galleries


# ---------------------------------------------------------------------------------------------- limitations
def _limitations(data: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    split = data["options"]["split"]
    internal = data["performance"]["internal"]["per_finding"]
    missing = [f"{f} ({e['reason'].removeprefix('n/a: ')})" for f, e in internal.items() if e.get("reason")]
    if missing:
        out.append(
            f"No estimate on the {split!r} split for {len(missing)} finding(s) with too little support: "
            + "; ".join(missing)
            + "."
        )
    for flag in data.get("subgroup_flags", []):
        out.append(
            f"{flag['set']}: {flag['finding']} {flag['metric']} in {flag['attribute']} = {flag['group']} is "
            f"{flag['value']:.3f} (CI up to {flag['high']:.3f}), below the overall {flag['overall']:.3f}."
        )
    for name, perf in [("internal test", data["performance"]["internal"]), *data["performance"]["external"].items()]:
        for f, e in perf["per_finding"].items():
            ece = e.get("ece") or {}
            if ece.get("low") is not None and ece["low"] > 0.1:
                out.append(
                    f"{name}: the probabilities of {f} are not calibrated (ECE {est_text(ece)}): read them as scores, not risks."
                )
    ops = (data.get("operating_points") or {}).get("findings") or {}
    uncalibrated = [
        f"{f} ({p.get('reason') or 'no reason recorded'})" for f, p in ops.items() if not p.get("calibrated")
    ]
    if uncalibrated:
        out.append(
            f"{len(uncalibrated)} of {len(ops)} finding(s) have no calibrated operating point: "
            + "; ".join(uncalibrated)
            + "."
        )
    elif not ops:
        out.append("No operating points were chosen on a validation split: no sensitivity or specificity is reported.")
    for name, ext in data["performance"]["external"].items():
        for f, e in ext["per_finding"].items():
            ref = (internal.get(f) or {}).get("auroc") or {}
            a = e.get("auroc") or {}
            if ref.get("value") is not None and a.get("high") is not None and a["high"] < ref["value"]:
                out.append(
                    f"{f}: AUROC drops on {name} ({est_text(a)}) below the internal test split's {ref['value']:.3f}."
                )
    if not data["performance"]["external"]:
        out.append("No external validation: performance on another site's data is unknown.")
    if not data["leakage"].get("clean", True):
        out.append(
            "The leakage audit found overlap between splits (see the leakage audit): test estimates may be optimistic."
        )
    return out


def est_text(e: Mapping[str, Any]) -> str:
    from .sections import est

    return est(e)


# ---------------------------------------------------------------------------------------------- PHI scan
def _phi_values(frame: pd.DataFrame, opt: ReportOptions) -> tuple[dict[str, str], dict[str, Any]]:
    """{value: where it came from} to scan the report for, and counts (never values) for the page."""
    from medclip.audit.phi import identifier_values_from_manifest

    found = identifier_values_from_manifest(frame)
    values = dict(found.values)
    counts: dict[str, Any] = {
        "identifier values from the images' DICOM headers": found.header_values,
        "identifier values from the manifest's folder and file names": found.path_values,
        "DICOM headers read (one per study)": found.headers_read,
    }
    if opt.phi_values:
        path = Path(opt.phi_values)
        try:
            extra = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise ReportError(f"{path}: --phi-values file not found") from None
        for value in extra:
            values.setdefault(value, "--phi-values")
        counts["identifier values from --phi-values"] = len(extra)
    return values, counts


def _scan(
    output: Path, files: Sequence[Path], values: Mapping[str, str], counts: Mapping[str, Any], allow: Sequence[str]
) -> dict[str, Any]:
    from medclip.audit.phi import scan_files

    result = scan_files(files, values=values, allow=[a for a in allow if a], root=output)
    data = result.to_dict()
    data["checked"] = {"files written by this command": len(files), **counts}
    data["summary"] = result.summary()
    return data


# ---------------------------------------------------------------------------------------------- build
def build_report(
    checkpoint: str | Path,
    manifest: str | Path,
    output_dir: str | Path,
    externals: Sequence[str | Path] = (),
    options: ReportOptions | None = None,
) -> ReportResult:
    """Write the audited report of ``checkpoint`` on ``manifest`` (and ``externals``) into ``output_dir``."""
    from medclip import __version__

    opt = options or ReportOptions()
    steps = _Steps(10, opt.progress)
    output = Path(output_dir)
    study_info = load_study_info(opt.study_info)

    steps("loading the model and the manifest")
    ckpt = CheckpointDir(checkpoint)
    model = load_model(checkpoint, device=opt.device)
    fingerprint = ckpt.fingerprint() if ckpt.path.is_dir() and ckpt.is_model() else None
    manifest_sha = content_fingerprint(manifest)
    eval_options = EvalOptions(
        split=opt.split,
        val_split=opt.val_split,
        train_split=opt.train_split,
        findings=opt.findings,
        style=opt.style,
        unmentioned_as_negative=opt.unmentioned_as_negative,
        n_boot=opt.n_boot,
        seed=opt.seed,
        batch_size=opt.batch_size,
        num_workers=opt.num_workers,
    )
    evaluator = Evaluator(model, manifest, eval_options)
    frame = evaluator.frame
    expected, expected_from = _expected_findings(
        ckpt, fingerprint, Path(opt.eval_dir) if opt.eval_dir else ckpt.eval_dir
    )
    _check_labels(frame, str(manifest), expected, expected_from)
    findings = evaluator.findings()
    thresholds, op_record = _operating_points(ckpt, fingerprint)
    classifier = evaluator.zeroshot_classifier()
    scores_dir = Path(opt.eval_dir) if opt.eval_dir else ckpt.eval_dir if fingerprint is not None else output / "scores"

    ext_frames: dict[str, tuple[pd.DataFrame, str]] = {}
    for ext in externals:
        name = Path(str(ext)).name.removesuffix(".parquet")
        if name in ext_frames:
            name = f"{name}-{len(ext_frames)}"
        ext_frame = read_manifest(ext)
        _check_labels(ext_frame, str(ext), findings, f"the internal manifest {manifest}")
        ext_frame = ext_frame.copy()
        ext_frame["split_original"] = ext_frame["split"]
        ext_frame["split"] = "external"
        if "source" not in ext_frame or ext_frame["source"].fillna("").astype(str).str.strip().eq("").all():
            ext_frame["source"] = name
        ext_frames[name] = (ext_frame, content_fingerprint(ext))

    steps("data card")
    card_internal = data_card(frame, findings, min_support=opt.min_support)
    card_external = {n: data_card(f, findings, min_support=opt.min_support) for n, (f, _) in ext_frames.items()}

    steps("leakage audit" + (": reading every image once" if opt.leakage_images else " (patients, report texts)"))
    phi_values, phi_counts = _phi_values(frame, opt)
    redact = Redactor(list(phi_values))
    # external manifests join the audit as splits of their own: a "new site" that holds training images is a leak
    audit_frame = pd.concat(
        [frame, *(f.assign(split=f"external:{n}") for n, (f, _) in ext_frames.items())], ignore_index=True
    )
    leakage, leakage_pairs = run_leakage_audit(
        audit_frame,
        images=opt.leakage_images,
        cache_dir=None if ext_frames else opt.cache_dir,
        redact=redact,
        progress=opt.progress,
    )

    steps(
        f"zero-shot probabilities of split {opt.split!r}"
        + (f" and {len(ext_frames)} external manifest(s)" if ext_frames else "")
    )
    internal_set, reused = _scored(
        evaluator,
        opt.split,
        "internal test",
        findings,
        cache_dir=scores_dir,
        fingerprint=fingerprint,
        manifest_sha=manifest_sha,
        opt=opt,
        classifier=classifier,
    )
    ext_sets: dict[str, ScoredSet] = {}
    ext_evaluators: dict[str, Evaluator] = {}
    for name, (ext_frame, sha) in ext_frames.items():
        ev = Evaluator(model, ext_frame, eval_options)
        ext_evaluators[name] = ev
        ext_sets[name], _ = _scored(
            ev,
            "external",
            name,
            findings,
            cache_dir=scores_dir,
            fingerprint=fingerprint,
            manifest_sha=sha,
            opt=opt,
            classifier=classifier,
        )

    steps("performance and calibration")
    performance: dict[str, Any] = {
        "internal": _performance_record(internal_set, thresholds, opt),
        "external": {n: _performance_record(s, thresholds, opt) for n, s in ext_sets.items()},
        "scores": "reused from the scores medclip saved for this model and manifest" if reused else "computed",
    }

    steps("retrieval and report drafting")
    performance["other"] = _other_tasks(ckpt, fingerprint, manifest_sha, evaluator, opt)

    steps("subgroups")
    subgroups = {
        "internal test": subgroup_metrics(
            internal_set,
            thresholds,
            performance["internal"]["per_finding"],
            n_boot=opt.n_boot,
            seed=opt.seed,
            min_support=opt.min_support,
            progress=opt.progress,
        )
    }
    for n, s in ext_sets.items():
        subgroups[n] = subgroup_metrics(
            s,
            thresholds,
            performance["external"][n]["per_finding"],
            n_boot=opt.n_boot,
            seed=opt.seed,
            min_support=opt.min_support,
            progress=opt.progress,
        )
    flags = [{"set": name, **f} for name, sub in subgroups.items() for f in sub["flagged"]]

    steps("failure gallery")
    failures, galleries = _failures(evaluator, internal_set, thresholds, opt, redact)

    steps("model card")
    card = model_card(model, fingerprint)
    sections_present = dict(SECTION_TITLES)
    if not ext_frames:
        sections_present.pop("external")
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "medclip_version": __version__,
        "manifest": {"name": Path(str(manifest)).name, "sha256": manifest_sha, "rows": len(frame)},
        "external_manifests": {n: {"sha256": sha, "rows": len(f)} for n, (f, sha) in ext_frames.items()},
        "options": {
            k: v
            for k, v in asdict(opt).items()
            if k not in ("study_info", "phi_values", "cache_dir", "eval_dir", "progress")
        },
        "findings": findings,
        "model": card,
        "data": {"internal": card_internal, "external": card_external},
        "leakage": leakage,
        "performance": performance,
        "operating_points": op_record,
        "subgroups": subgroups,
        "subgroup_flags": flags,
        "failures": failures,
        "study_information": study_info,
        "checklist": checklist(study_info, sections_present),
    }
    data["limitations"] = _limitations(data)

    steps("writing index.html, report.md, report.json and scanning them for PHI")
    figures: list[Figure] = []
    for name, perf in [("internal test", performance["internal"]), *performance["external"].items()]:
        png = reliability_png(perf["per_finding"], f"Reliability: {name}")
        if png is not None:
            figures.append(
                Figure(
                    png,
                    f"Reliability diagrams, {name} (points: bins, numbers: images per bin)",
                    f"reliability-{len(figures)}.png",
                )
            )
    allow = [fingerprint or "", manifest_sha, *(sha for _, sha in ext_frames.values()), *_own_values(data)]
    files = _write(output, data, figures, galleries, leakage_pairs, phi={})
    first = _scan(output, files, phi_values, phi_counts, allow)
    files = _write(output, data, figures, galleries, leakage_pairs, phi=first)
    final = _scan(output, files, phi_values, phi_counts, allow)
    if final["ok"] != first["ok"] or len(final.get("hits") or []) != len(first.get("hits") or []):
        files = _write(output, data, figures, galleries, leakage_pairs, phi=final)
    data["phi_scan"] = final
    for hit in final.get("hits") or []:
        log.warning("PHI scan: %s at %s: %s", hit["file"], hit["location"], hit["kind"])
    return ReportResult(output, output / HTML_FILE, output / MARKDOWN_FILE, output / JSON_FILE, bool(final["ok"]), data)


def _own_values(data: Mapping[str, Any]) -> list[str]:
    """Strings the report computed itself that look like identifiers to a pattern scan: large counts (parameters,
    images) and the model card's weight sources (a file name with a checksum). Declared safe to the PHI scan."""
    out: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, (int, np.integer)) and not isinstance(obj, bool) and abs(int(obj)) >= 100_000:
            out.add(str(int(obj)))

    walk(data)
    card = data.get("model") or {}
    finished = (card.get("training") or {}).get("finished")
    if finished:  # the date the model finished training (not about any patient)
        out.add(str(finished))
    for tower in ("image_tower", "text_tower"):
        for key in ("name", "weights"):
            value = (card.get(tower) or {}).get(key)
            if value:
                out.add(str(value))
    return sorted(out)


def _write(
    output: Path,
    data: dict[str, Any],
    figures: Sequence[Figure],
    galleries: Sequence[Gallery],
    leakage_pairs: Sequence[tuple[bytes, str, list[str]]],
    *,
    phi: Mapping[str, Any],
) -> list[Path]:
    """Write the three files (and the Markdown's images); return every path written."""
    data["phi_scan"] = dict(phi)
    doc = build_document(data, calibration_figures=figures, failure_galleries=galleries, leakage_pairs=leakage_pairs)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_write(output / HTML_FILE) as tmp:
        Path(tmp).write_text(render_html(doc), encoding="utf-8")
    written.append(output / HTML_FILE)
    markdown, images = render_markdown(doc)
    image_dir = output / IMAGES_DIR
    image_dir.mkdir(exist_ok=True)
    for name, png in images.items():
        with atomic_write(image_dir / name) as tmp:
            Path(tmp).write_bytes(png)
        written.append(image_dir / name)
    with atomic_write(output / MARKDOWN_FILE) as tmp:
        Path(tmp).write_text(markdown, encoding="utf-8")
    written.append(output / MARKDOWN_FILE)
    with atomic_write(output / JSON_FILE) as tmp:
        Path(tmp).write_text(json.dumps(jsonable(data, digits=6), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    written.append(output / JSON_FILE)
    return written
