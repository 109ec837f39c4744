"""`medclip report` end to end on a tiny model and a manifest made here: every section with numbers, reuse,
refusals, support rules, subgroup flags, PHI redaction and scan, study information, the browser view."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from browser import launch_chromium, sync_playwright_api
from PIL import Image

from medclip.data.manifest import write_manifest
from medclip.data.reports import REDACTED
from medclip.model import create_model
from medclip.report import ReportError, ReportOptions, build_report
from medclip.report.checklist import StudyInfoError, load_study_info
from medclip.report.cli import add_report_parser
from medclip.report.performance import ScoredSet, Threshold, finding_metrics, subgroup_metrics
from medclip.report.sections import SECTION_TITLES

EFFUSION = "FINDINGS: Right pleural effusion. Heart size is normal. IMPRESSION: Pleural effusion."
NORMAL = "FINDINGS: The lungs are clear. No pleural effusion. Heart size is normal. IMPRESSION: No acute abnormality."
CARDIO = "FINDINGS: The heart is enlarged. No effusion. IMPRESSION: Cardiomegaly."
PLANTED_NAME = "Quackenbush"  # a "patient name" planted in free text


def _images(root: Path, n_patients: int, prefix: str, rng: np.random.Generator, planted: bool = False) -> list[dict]:
    rows = []
    kinds = [(EFFUSION, 1.0, 0.0), (NORMAL, 0.0, 0.0), (CARDIO, 0.0, 1.0)]
    for p in range(n_patients):
        text, effusion, cardio = kinds[p % 3]
        split = "train" if p < 0.4 * n_patients else "val" if p < 0.6 * n_patients else "test"
        for i in range(2):
            img = rng.integers(0, 80, (64, 64)).astype(np.uint8)
            if effusion:
                img[48:, :] += 150
            if cardio:
                img[20:48, 18:46] += 120
            path = root / "images" / f"{prefix}{p:03d}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            report = text + (f" Discussed with {PLANTED_NAME}." if planted else "")
            rows.append(
                {
                    "image_id": f"{prefix}img{p:03d}{i}",
                    "path": str(path),
                    "kind": "image",
                    "files": None,
                    "patient_id": f"{prefix}pat{p:03d}",
                    "study_id": f"{prefix}st{p:03d}",
                    "series_id": f"{prefix}st{p:03d}",
                    "modality": "DX",
                    "view_position": "PA" if p % 2 else "AP",
                    "sex": "F" if p % 4 < 2 else "M",
                    "age_group": "40-49" if p % 5 < 3 else "60-69",
                    "report_findings": "",
                    "report_impression": "",
                    "report_text": report,
                    "split": split,
                    "label.pleural_effusion": effusion,
                    "label.cardiomegaly": cardio,
                }
            )
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(model folder, manifest, external manifest): 90 patients (2 images each), patient-level splits."""
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    create_model("tiny-test").save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    manifest = write_manifest(pd.DataFrame(_images(root, 90, "a", rng)), root / "manifest.parquet", root=root)
    external = pd.DataFrame(_images(root, 36, "x", rng))
    external = write_manifest(external, root / "site2.parquet", root=root)
    return root / "model", manifest, external


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medclip")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    return args.func(args)


def _sections(html: str) -> dict[str, str]:
    """Section id -> its text (tags stripped)."""
    out = {}
    for m in re.finditer(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S):
        out[m.group(1)] = re.sub(r"<[^>]+>", " ", m.group(2))
    return out


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    model, manifest, external = study
    out = tmp_path_factory.mktemp("report_out") / "report"
    code = _run(
        [
            "--checkpoint",
            str(model),
            "--manifest",
            str(manifest),
            "--external",
            str(external),
            "-o",
            str(out),
            "--bootstrap",
            "50",
        ]
    )
    assert code == 0
    return out


def test_report_writes_every_section_with_numbers_and_loads_nothing_from_outside(report) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    sections = _sections(html)
    assert list(sections) == list(SECTION_TITLES)
    for sid in ("summary", "data-card", "performance", "external", "calibration", "subgroups"):
        assert re.search(r"\d\.\d{3}|\b\d+\b", sections[sid]), f"section {sid} has no number"
    # one self-contained file: no URL, no script, images inline
    assert not re.search(r"(src|href)=\"(https?:|//)", html)
    assert "<script" not in html and "<img" in html and "data:image/png;base64," in html
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert data["format"] == "medclip.report"
    assert data["findings"] == ["pleural_effusion", "cardiomegaly"]
    # data card: patients per split as in the manifest (90 patients: 36 train, 18 val, 36 test)
    assert {s: c["patients"] for s, c in data["data"]["internal"]["splits"].items()} == {
        "train": 36,
        "val": 18,
        "test": 36,
    }
    assert data["data"]["internal"]["splits"]["test"]["attributes"]["sex"] == {"F": 36, "M": 36}
    internal = data["performance"]["internal"]["per_finding"]
    assert internal["pleural_effusion"]["positives"] == 24 and internal["cardiomegaly"]["positives"] == 24
    assert 0.0 <= internal["pleural_effusion"]["auroc"]["value"] <= 1.0
    assert internal["pleural_effusion"]["auroc"]["n_groups"] == 36
    assert set(data["performance"]["external"]) == {"site2"}
    assert data["performance"]["external"]["site2"]["images"] == 72
    # subgroups by sex, age band and view, each cell with its n; one modality only: not broken down
    sub = data["subgroups"]["internal test"]
    assert set(sub["attributes"]) == {"sex", "age_group", "view_position"}
    assert "one modality only" in sub["not_broken_down"]["modality"]
    for group in sub["attributes"]["sex"].values():
        assert group["images"] == 36
    # the external manifest is a site of its own
    assert "source" in data["subgroups"]["site2"]["not_broken_down"]
    md = (report / "report.md").read_text(encoding="utf-8")
    for title in SECTION_TITLES.values():
        assert f"## {title}" in md
    for name in re.findall(r"\(images/([^)]+)\)", md):
        assert (report / "images" / name).is_file()
    assert data["phi_scan"]["ok"] is True and data["phi_scan"]["files_scanned"] >= 3


def test_clean_manifest_has_no_leakage_and_planted_leaks_are_each_named_on_the_page(study, report, tmp_path) -> None:
    data = json.loads((report / "report.json").read_text())
    leak = data["leakage"]
    assert leak["clean"] is True
    assert leak["patients"]["n_in_several_splits"] == 0
    assert leak["reports"]["n_cross_split"] == 0
    # the external manifest's 72 images join the audit as a split of their own
    assert leak["images"]["n_cross_split"] == 0 and leak["images"]["n_images"] == 180 + 72
    model, manifest, _ = study
    df = pd.read_parquet(manifest)
    root = Path(manifest).parent
    test_rows = df.index[df["split"] == "test"]
    train_rows = df.index[df["split"] == "train"]
    # a patient in two splits: one test image moved under a training patient's id
    df.loc[test_rows[0], "patient_id"] = df.loc[train_rows[0], "patient_id"]
    # a duplicated report: a unique text in train and in test
    unique = "FINDINGS: Small left apical pneumothorax after line placement. IMPRESSION: Pneumothorax."
    df.loc[train_rows[2], "report_text"] = unique
    df.loc[test_rows[4], "report_text"] = unique
    # a near-duplicate image: a training image resized, re-encoded as JPEG and cropped by 2 px, as a test image
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    smooth = (
        60
        + 120 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.02)
        + 70 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.4) ** 2) / 0.05)
    )
    original = tmp_path / "original.png"
    Image.fromarray(np.clip(smooth + 40 * yy, 0, 255).astype(np.uint8)).save(original)
    df.loc[train_rows[6], "path"] = str(original)
    copy = Image.open(original).resize((128, 128)).crop((2, 2, 126, 126))
    copy_path = tmp_path / "copy.jpg"
    copy.save(copy_path, quality=60)
    df.loc[test_rows[8], "path"] = str(copy_path)
    leaky = write_manifest(
        df.assign(path=[str(root / p) if not Path(p).is_absolute() else p for p in df["path"]]),
        tmp_path / "leaky.parquet",
    )
    result = build_report(model, leaky, tmp_path / "r", options=ReportOptions(n_boot=0))
    leak = result.data["leakage"]
    assert leak["clean"] is False
    assert leak["patients"]["n_in_several_splits"] == 1 and leak["patients"]["pairs"] == {"train/test": 1}
    assert leak["reports"]["n_cross_split"] == 1 and leak["reports"]["pairs"] == {"train/test": 1}
    pairs = leak["images"]["cross_split_pairs"]
    assert {(p["a"], p["b"]) for p in pairs} & {
        (df.loc[train_rows[6], "image_id"], df.loc[test_rows[8], "image_id"]),
        (df.loc[test_rows[8], "image_id"], df.loc[train_rows[6], "image_id"]),
    }
    page = _sections((tmp_path / "r" / "index.html").read_text())["leakage"]
    assert "1 patient(s) in more than one split" in page and "1 report text(s) in more than one split" in page
    assert "near-duplicate image pair(s) across splits" in page
    assert any("leakage audit found overlap" in line for line in result.data["limitations"])


def test_an_external_manifest_holding_a_training_image_is_a_leak(study, tmp_path) -> None:
    model, manifest, external = study
    train = pd.read_parquet(manifest).query("split == 'train'").head(1)
    root = Path(manifest).parent
    ext = pd.read_parquet(external)
    ext = pd.concat([ext, train.assign(path=[str(root / p) for p in train["path"]])], ignore_index=True)
    ext = write_manifest(
        ext.assign(path=[str(root / p) if not Path(p).is_absolute() else p for p in ext["path"]]),
        tmp_path / "site3.parquet",
    )
    result = build_report(model, manifest, tmp_path / "r", [ext], ReportOptions(n_boot=0))
    leak = result.data["leakage"]
    assert leak["clean"] is False
    assert leak["repeated_images"]["pairs"] == {"train/external:site3": 1}
    assert "1 image id(s) listed in more than one split" in leak["summary"]


def test_report_reuses_saved_scores_without_embedding_again(study, report, tmp_path, monkeypatch) -> None:
    model, manifest, external = study
    import medclip.eval.runner as runner

    def no_embedding(*args, **kwargs):
        raise AssertionError("images were embedded again")

    monkeypatch.setattr(runner.Evaluator, "split", no_embedding)
    # retrieval and drafting need image features, so reuse here means eval's metrics.json: skip them
    monkeypatch.setattr("medclip.report.builder._other_tasks", lambda *a, **k: {"source": "skipped in this test"})
    result = build_report(
        model, manifest, tmp_path / "again", [external], ReportOptions(n_boot=20, leakage_images=False)
    )
    assert result.data["performance"]["scores"].startswith("reused")
    first = json.loads((report / "report.json").read_text())["performance"]["internal"]["per_finding"]
    again = result.data["performance"]["internal"]["per_finding"]
    assert again["pleural_effusion"]["auroc"]["value"] == pytest.approx(first["pleural_effusion"]["auroc"]["value"])


def test_report_after_eval_reuses_its_scores_and_metrics_without_embedding(study, tmp_path, monkeypatch) -> None:
    model, manifest, _ = study
    from medclip.eval.runner import evaluate

    eval_dir = tmp_path / "eval"
    metrics = evaluate(model, manifest, ("zeroshot", "retrieval"), output_dir=eval_dir, n_boot=0)
    assert metrics["model_fingerprint"] and metrics["manifest_sha256"]
    import medclip.eval.runner as runner

    def no_embedding(*args, **kwargs):
        raise AssertionError("images were embedded again")

    monkeypatch.setattr(runner.Evaluator, "split", no_embedding)
    result = build_report(
        model, manifest, tmp_path / "r", options=ReportOptions(n_boot=0, leakage_images=False, eval_dir=str(eval_dir))
    )
    perf = result.data["performance"]
    assert perf["scores"].startswith("reused") and perf["other"]["source"].startswith("reused from metrics.json")
    assert perf["other"]["retrieval"]["image_to_report"]["R@10"] == metrics["retrieval"]["image_to_report"]["R@10"]
    assert perf["internal"]["per_finding"]["pleural_effusion"]["auroc"]["value"] == pytest.approx(
        metrics["zeroshot"]["per_finding"]["pleural_effusion"]["auroc"]["value"]
    )


def test_manifest_labelled_for_another_model_is_refused_with_the_command_to_fix_it(study, tmp_path) -> None:
    model, manifest, _ = study
    (model / "thresholds.json").write_text(
        json.dumps({"format": "medclip.thresholds", "version": 2, "thresholds": {"pleural_effusion": 0.5}})
    )
    try:
        df = pd.read_parquet(manifest)
        other = df.drop(columns=["label.pleural_effusion", "label.cardiomegaly"]).assign(**{"label.pneumothorax": 0.0})
        other_path = write_manifest(other, tmp_path / "other.parquet", root=Path(manifest).parent)
        with pytest.raises(
            ReportError, match=r"share no finding with this model's \(pleural_effusion.*thresholds.json"
        ):
            build_report(model, other_path, tmp_path / "r", options=ReportOptions(n_boot=0, leakage_images=False))
        unlabelled = write_manifest(
            df.drop(columns=["label.pleural_effusion", "label.cardiomegaly"]),
            tmp_path / "unlabelled.parquet",
            root=Path(manifest).parent,
        )
        with pytest.raises(ReportError, match="medclip label"):
            build_report(model, unlabelled, tmp_path / "r2", options=ReportOptions(n_boot=0, leakage_images=False))
    finally:
        (model / "thresholds.json").unlink()


def test_findings_below_minimum_support_show_the_reason_not_a_number(study, tmp_path) -> None:
    model, manifest, _ = study
    result = build_report(
        model, manifest, tmp_path / "r", options=ReportOptions(n_boot=0, min_support=30, leakage_images=False)
    )
    entry = result.data["performance"]["internal"]["per_finding"]["pleural_effusion"]
    assert entry["reason"] == "n/a: 24 positives; needs 30" and "auroc" not in entry
    md = (tmp_path / "r" / "report.md").read_text()
    assert "pleural_effusion (24 positives; needs 30)" in md
    assert any("too little support" in line for line in result.data["limitations"])


def test_a_subgroup_whose_ci_lies_below_the_overall_estimate_is_flagged() -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(n)],
            "sex": ["F"] * (n // 2) + ["M"] * (n // 2),
        }
    )
    y = np.tile([0.0, 1.0], n // 2)
    p = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, n)  # separable for women...
    p[n // 2 :] = rng.uniform(0, 1, n // 2)  # ...chance for men
    scored = ScoredSet("test", frame, ["pleural_effusion"], y[:, None], np.clip(p, 0, 1)[:, None])
    thresholds = {"pleural_effusion": Threshold(0.5, True)}
    overall = finding_metrics(scored, thresholds, n_boot=200)
    sub = subgroup_metrics(scored, thresholds, overall, n_boot=200)
    groups = sub["attributes"]["sex"]
    assert "pleural_effusion auroc" in groups["M"]["flagged"]
    assert groups["F"]["flagged"] == []
    assert groups["M"]["findings"]["pleural_effusion"]["n"] == 100
    assert [f["group"] for f in sub["flagged"] if f["metric"] == "auroc"] == ["M"]


def test_planted_phi_in_report_text_is_found_by_the_scan_if_shown_and_never_shown(study, tmp_path, monkeypatch) -> None:
    model, manifest, _ = study
    rng = np.random.default_rng(1)
    df = pd.DataFrame(_images(tmp_path, 45, "q", rng, planted=True))
    planted = write_manifest(df, tmp_path / "planted.parquet", root=tmp_path)
    values = tmp_path / "phi_values.txt"
    values.write_text(PLANTED_NAME + "\n")
    options = ReportOptions(n_boot=0, leakage_images=False, phi_values=str(values), min_support=5)
    clean = build_report(model, planted, tmp_path / "clean", options=options)
    assert clean.phi_ok
    excerpts = [
        e["excerpt"]
        for kinds in clean.data["failures"]["per_finding"].values()
        for entries in kinds.values()
        for e in entries
    ]
    assert excerpts and all(PLANTED_NAME not in e for e in excerpts) and any(REDACTED in e for e in excerpts)
    for path in (tmp_path / "clean").rglob("*"):
        if path.is_file():
            assert PLANTED_NAME.lower().encode() not in path.read_bytes().lower(), path
    # the same report without redaction shows the name: the scan finds it and the command exits 3
    import medclip.report.builder as builder

    monkeypatch.setattr(builder.Redactor, "__call__", lambda self, text: text or "")
    code = _run(
        [
            "--checkpoint",
            str(model),
            "--manifest",
            str(planted),
            "-o",
            str(tmp_path / "leaky"),
            "--bootstrap",
            "0",
            "--min-positives",
            "5",
            "--no-image-leakage",
            "--phi-values",
            str(values),
        ]
    )
    assert code == 3
    leaky = json.loads((tmp_path / "leaky" / "report.json").read_text())
    kinds = {h["kind"] for h in leaky["phi_scan"]["hits"]}
    assert leaky["phi_scan"]["ok"] is False and any("value" in k for k in kinds)
    assert {h["file"] for h in leaky["phi_scan"]["hits"]} >= {"index.html", "report.md", "report.json"}
    assert PLANTED_NAME not in json.dumps(leaky["phi_scan"])


def test_study_information_answers_checklist_items_and_unknown_keys_are_refused(study, tmp_path) -> None:
    info = tmp_path / "study.yaml"
    info.write_text("reference_standard: Two radiologists read every study; a third settled disagreements.\n")
    assert load_study_info(info) == {
        "reference_standard": "Two radiologists read every study; a third settled disagreements."
    }
    model, manifest, _ = study
    result = build_report(
        model, manifest, tmp_path / "r", options=ReportOptions(n_boot=0, leakage_images=False, study_info=str(info))
    )
    items = {i["item"]: i for i in result.data["checklist"]}
    ref = items["Definition of the reference standard, in detail to allow replication"]
    assert ref["status"] == "study-info"
    assert (
        items["Sources of funding"]["status"] == "missing"
        and items["Sources of funding"]["where"] == "study.yaml: funding"
    )
    assert items["Validation or testing on external data"]["status"] == "missing"  # no --external given
    assert "Two radiologists read every study" in (tmp_path / "r" / "index.html").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("refrence_standard: x\n")
    with pytest.raises(StudyInfoError, match="did you mean 'reference_standard'"):
        load_study_info(bad)


@pytest.mark.browser
def test_browser_opens_the_report_from_disk_with_every_section_and_no_request(report, tmp_path) -> None:
    sync_api = sync_playwright_api()
    screenshot = Path(os.environ.get("MEDCLIP_REPORT_SCREENSHOT") or tmp_path / "report.png")
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("request", lambda r: requests.append(r.url))
            page.goto((report / "index.html").resolve().as_uri())
            for sid, title in SECTION_TITLES.items():
                section = page.locator(f"section#{sid}")
                assert section.count() == 1, sid
                assert title in section.locator("h2").inner_text()
                if sid not in ("checklist", "study-information", "leakage", "phi-scan", "failures"):
                    assert re.search(r"\d", section.inner_text()), f"no number in {sid}"
            images = page.locator("img")
            assert images.count() >= 3
            # every image decoded (inline data, nothing fetched)
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            assert min(widths) > 0
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    outside = [u for u in requests if not (u.startswith("file://") or u.startswith("data:"))]
    assert outside == []
    assert screenshot.stat().st_size > 10_000
