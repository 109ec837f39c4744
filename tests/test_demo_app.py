"""The triage demo end to end: engine + gallery on a tiny random model, the CLI, Gradio, and a real browser.

``python app.py`` runs in a subprocess on a free localhost port behind basic auth (started early,
so it boots while the in-process tests run). Gradio's own client checks the upload and error
paths against it; the browser test drives Debian's Chromium with Playwright (no browser
download), logs in, uploads a DICOM with planted PHI, waits for the ranked findings
and the drafted report, checks that no PHI reaches the page and that no request leaves localhost,
uploads a broken file, checks the error and that the app keeps serving, and saves a screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from browser import launch_chromium, sync_playwright_api
from phi import assert_no_phi_in_text

from medclip.checkpoint import CheckpointDir
from medclip.data.manifest import read_manifest
from medclip.demo import Gallery, GalleryError, TriageEngine, UploadLimits, build_gallery, read_upload
from medclip.demo.cli import NO_CHECKPOINT_HELP, add_demo_arguments, find_checkpoint, parse_auth, run_demo
from medclip.inference.drafting import ReportDrafter, drafting_corpus
from medclip.inference.thresholds import OperatingPoint, save_thresholds
from medclip.model import create_model
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
EXPORT = SAMPLE_EXPORT_DIR
SAMPLE_DICOM = EXPORT / "study_0001" / "series_1" / "IM0001.dcm"
#: Planted in the sample (name, MRN, accession, birth date, institution) plus a referring physician we add.
PLANTED_PHI = ("Zzplanted", "Quinn", "MRN000102X", "ACC0000001", "19420413", "Zzreferrer")
N_STUDIES = 6
EFFUSION_AUROC = {"value": 0.81, "low": 0.62, "high": 0.95, "n": 12, "n_groups": 6}
#: What the issue saw: Youden's index on 12 validation images with 4 positives landed on 0.00 (flags everyone).
EFFUSION_REASON = "only 4 positives (needs 10); only 8 negatives (needs 10); threshold 0.00 flags every image"


def _validated(threshold: float, auroc: tuple[float, float, float]) -> OperatingPoint:
    """A point chosen on a healthy validation split (80 images, 20 positives) with the given AUROC and CI."""
    value, low, high = auroc
    return OperatingPoint(
        threshold,
        "youden",
        n=80,
        positives=20,
        auroc={"value": value, "low": low, "high": high, "n": 80, "n_groups": 40},
        flag_rate=0.45,
        score_range=(0.01, 0.93),
        sensitivity={"value": 0.8, "low": 0.62, "high": 0.95, "n": 80, "n_groups": 40},
        specificity={"value": 0.7, "low": 0.58, "high": 0.81, "n": 80, "n_groups": 40},
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model folder with operating points, a drafter and a gallery from part of the indexed sample.

    Pleural effusion has the issue's point: Youden at 0.00 on 12 validation images with 4 positives
    (were it trusted, every study would get "priority"): it is written as not calibrated. Pneumothorax,
    the one critical finding, is calibrated at 0.05 on a healthy split but its validation AUROC CI
    reaches down to 0.52 (below the 0.6 floor): it is called, yet were it allowed to set the priority
    it would make the study urgent. Cardiomegaly (a routine finding) is calibrated and may set the
    priority: the study is "routine". Every other finding has no operating point.
    """
    from medclip.data.indexer import index_export

    root = tmp_path_factory.mktemp("demo")
    export = root / "export"
    export.mkdir()
    for study in sorted(p for p in EXPORT.iterdir() if p.is_dir())[:N_STUDIES]:
        shutil.copytree(study, export / study.name)
    shutil.copy(EXPORT / "reports.csv", export / "reports.csv")
    index_export(
        export,
        root / "manifest.parquet",
        reports=export / "reports.csv",
        fractions=(1.0, 0.0, 0.0),
        workers=1,
        progress=False,
    )
    torch.manual_seed(0)
    model = create_model("tiny-test").eval()
    model_dir = model.save_pretrained(root / "model")
    save_thresholds(
        model_dir,
        {
            "pleural_effusion": OperatingPoint(0.0, "youden", n=12, positives=4, auroc=EFFUSION_AUROC),
            "pneumothorax": _validated(0.05, (0.66, 0.52, 0.79)),
            "cardiomegaly": _validated(0.05, (0.85, 0.74, 0.93)),
        },
        uncertain_margin=0.05,
        criterion="youden",
    )
    # the drafter as `medclip eval --save-to-checkpoint` writes it: training reports, the one corpus policy
    train = read_manifest(root / "manifest.parquet")
    ckpt = CheckpointDir(model_dir)
    drafter = ReportDrafter.build(model, drafting_corpus(train.to_dict("records")))
    drafter.save(ckpt.drafter, model_fingerprint=ckpt.fingerprint())
    build_gallery(model, root / "manifest.parquet", model_dir / "gallery")
    return model_dir


@dataclass
class Server:
    """``python app.py`` running in a subprocess behind basic auth, with its own temporary folder."""

    url: str
    temp_root: Path
    proc: subprocess.Popen


AUTH = ("ann", "secret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_process(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start ``python app.py --checkpoint ... --port FREE`` (auth from $MEDCLIP_DEMO_AUTH) without waiting for it."""
    work = tmp_path_factory.mktemp("server")
    temp_root = work / "tmp"
    temp_root.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": str(temp_root),
        "PYTHONUNBUFFERED": "1",
        "MEDCLIP_DEMO_AUTH": ":".join(AUTH),
    }
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--checkpoint", str(checkpoint), "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield Server(f"http://127.0.0.1:{port}/", temp_root, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def app_server(app_process: Server) -> Server:
    """The app process once it answers HTTP."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 150
    while True:
        if app_process.proc.poll() is not None:
            out = app_process.proc.stdout.read() if app_process.proc.stdout else ""
            pytest.fail(f"app.py exited with {app_process.proc.returncode}: {out}")
        try:
            with urllib.request.urlopen(app_process.url, timeout=2):
                return app_process
        except urllib.error.HTTPError:
            return app_process  # answering (the login page or a 401)
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {app_process.url}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def engine(checkpoint: Path, app_process: Server) -> TriageEngine:
    # app_process: `python app.py` boots in the background while the in-process tests run (saves wall time)
    return TriageEngine.load(checkpoint)


@pytest.fixture(scope="module")
def phi_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample DICOM (planted name, MRN, accession, birth date) plus a planted referring physician."""
    ds = pydicom.dcmread(SAMPLE_DICOM)
    ds.ReferringPhysicianName = "Zzreferrer^Planted"
    path = tmp_path_factory.mktemp("upload") / "chest_upload.dcm"
    ds.save_as(path)
    return path


def test_gallery_holds_scrubbed_reports_and_refuses_another_model(checkpoint: Path) -> None:
    gallery = Gallery.load(checkpoint / "gallery")
    assert len(gallery) >= N_STUDIES and gallery.embeddings.shape[1] == 32
    text = " ".join(gallery.reports) + " ".join(gallery.table["image_id"])
    assert_no_phi_in_text(text, PLANTED_PHI)
    assert len(list((checkpoint / "gallery" / "thumbnails").glob("*.png"))) == len(gallery)
    torch.manual_seed(1)
    with pytest.raises(GalleryError, match="another model"):
        Gallery.load(checkpoint / "gallery", create_model("tiny-test"))


def test_engine_triage_on_a_real_dicom(engine: TriageEngine, phi_dicom: Path) -> None:
    study = read_upload(phi_dicom)
    view, result = engine.triage(study)
    assert view.shape == (64, 64) and view.dtype == np.uint8
    assert len(result.findings) == 14
    # thresholds.json: effusion's 0.00 chosen on 4 positives is not calibrated (it would have flagged every study);
    # pneumothorax is called positive but its AUROC CI is below the floor: not flagged, it cannot make the study
    # urgent; cardiomegaly (routine) is the one finding that may set the priority
    effusion = next(f for f in result.findings if f.concept_id == "pleural_effusion")
    assert effusion.status == "not calibrated" and not effusion.can_raise_priority
    assert effusion.point.reason == EFFUSION_REASON and effusion.point.auroc == EFFUSION_AUROC
    assert effusion.point.candidate == {"method": "youden", "threshold": 0.0}
    pneumothorax = next(f for f in result.findings if f.concept_id == "pneumothorax")
    assert pneumothorax.status == "positive" and not pneumothorax.flagged and not pneumothorax.can_raise_priority
    cardiomegaly = next(f for f in result.findings if f.concept_id == "cardiomegaly")
    assert cardiomegaly.calibrated and cardiomegaly.can_raise_priority
    assert result.priority.level == "routine" and result.priority.reasons == ()
    assert effusion.name in result.priority.not_calibrated and result.priority.cannot_raise == (pneumothorax.name,)
    assert [f.status for f in result.findings].count("not calibrated") == 12
    probabilities = [f.probability for f in result.findings]
    assert probabilities == sorted(probabilities, reverse=True)
    assert result.similar and result.similar[0].score >= result.similar[-1].score
    assert len({m.study_id for m in result.similar}) == len(result.similar)
    assert result.report_text.startswith(("FINDINGS:", "IMPRESSION:")) and "XXXX" not in result.report_text
    everything = repr(result) + repr(study.header)
    assert_no_phi_in_text(everything, PLANTED_PHI)


def test_window_presets_and_custom_window_change_the_view(engine: TriageEngine) -> None:
    study = read_upload(SAMPLE_DICOM)
    auto = engine.model_view(study, "auto")
    custom = engine.model_view(study, (60.0, 40.0))
    assert not np.array_equal(auto, custom)
    with pytest.raises(ValueError):
        engine.model_view(study, "no-such-preset")


def test_volume_upload_slices_and_window(engine: TriageEngine) -> None:
    import nibabel.testing

    study = read_upload(Path(nibabel.testing.data_path) / "example4d.nii.gz")  # 4D: the first volume is shown
    assert study.kind == "nifti" and study.windowable and study.n_slices == 24 and study.header["volumes"] == 2
    middle = engine.model_view(study)
    assert np.array_equal(middle, engine.model_view(study, slice_index=12))
    assert not np.array_equal(engine.model_view(study, slice_index=3), middle)
    assert not np.array_equal(engine.model_view(study, (200.0, 100.0), slice_index=12), middle)
    with pytest.raises(ValueError, match="out of range"):
        engine.model_view(study, slice_index=24)
    _, result = engine.triage(study, "brain", 5)
    assert len(result.findings) == 14


def test_engine_without_gallery_explains_how_to_build_one(checkpoint: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare, ignore=shutil.ignore_patterns("gallery", "thresholds.json", "drafter"))
    engine = TriageEngine.load(bare, findings=["pneumothorax", "pleural_effusion"])
    assert engine.gallery is None and engine.drafter is None
    assert "--build-gallery" in engine.gallery_note and "--task report --save-to-checkpoint" in engine.gallery_note
    # no thresholds.json: nothing is called, and the priority says it cannot be set
    assert "not calibrated" in engine.gallery_note and "--task zeroshot --save-to-checkpoint" in engine.gallery_note
    _, result = engine.triage(read_upload(SAMPLE_DICOM))
    assert result.similar == [] and result.report_text == ""
    assert {f.status for f in result.findings} == {"not calibrated"} and result.priority.level == "not calibrated"


def test_cli_without_checkpoint_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import argparse

    monkeypatch.chdir(tmp_path)
    args = add_demo_arguments(argparse.ArgumentParser()).parse_args([])
    assert find_checkpoint(None) is None
    assert run_demo(args, serve=lambda *a, **k: pytest.fail("must not serve without a checkpoint")) == 1
    assert "medclip quickstart" in capsys.readouterr().err
    assert "medclip quickstart" in NO_CHECKPOINT_HELP


def test_page_lives_in_the_package_and_app_py_only_launches_it() -> None:
    """The page is ``medclip.demo.app`` (a wheel serves it); the repository's app.py imports its ``main``."""
    import ast

    import medclip.demo.app as page
    import medclip.demo.cli as cli

    assert callable(page.build_demo) and callable(page.serve) and callable(page.main)
    assert not hasattr(cli, "APP_PATH") and not hasattr(cli, "REPO_ROOT")
    tree = ast.parse((REPO / "app.py").read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], "app.py must stay a launcher"
    assert any(isinstance(n, ast.ImportFrom) and n.module == "medclip.demo.app" for n in tree.body)


def test_cli_options_and_auth(
    engine: TriageEngine, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import argparse

    import medclip.demo.cli as cli
    import medclip.demo.startup as startup

    parser = argparse.ArgumentParser()
    cli.add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["demo", "--checkpoint", str(checkpoint), "--port", "0", "--auth", "ann:secret", "--max-upload-mb", "1"]
    )
    assert args.host == "127.0.0.1" and parse_auth(args.auth) == ("ann", "secret")
    with pytest.raises(ValueError):
        parse_auth("nopassword")
    seen: dict = {}

    def fake_serve(engine: TriageEngine, **kwargs) -> int:
        seen.update(kwargs, engine=engine)
        return 0

    monkeypatch.setattr(
        startup, "load_engine", lambda a: engine if a.checkpoint == checkpoint else pytest.fail("wrong checkpoint")
    )
    assert args.func(args, serve=fake_serve) == 0
    assert seen["auth"] == ("ann", "secret") and seen["host"] == "127.0.0.1" and seen["engine"] is engine
    assert isinstance(seen["limits"], UploadLimits) and seen["limits"].max_upload_bytes == 1024**2

    def broken_gallery(a: Namespace) -> TriageEngine:
        raise GalleryError(f"{a.gallery}: not a gallery folder")

    monkeypatch.setattr(startup, "load_engine", broken_gallery)
    assert run_demo(Namespace(**{**vars(args), "gallery": checkpoint / "nowhere"}), serve=fake_serve) == 2
    assert "nowhere: not a gallery folder" in capsys.readouterr().err
    with pytest.raises(GalleryError, match="not a gallery folder"):
        Gallery.load(checkpoint / "nowhere")


def test_gradio_client_upload_errors_and_auth(app_server: Server, phi_dicom: Path, tmp_path: Path) -> None:
    """Gradio's own client against ``python app.py`` behind basic auth: upload, error paths, window preset."""
    import urllib.error
    import urllib.request

    from gradio_client import Client, handle_file

    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(app_server.url + "config", timeout=10)  # basic auth guards the page
    client = Client(app_server.url, verbose=False, download_files=False, auth=AUTH)
    out = client.predict(handle_file(str(phi_dicom)), api_name="/load_upload")
    page = " ".join(str(x) for x in out)
    assert "ranked-findings" in page and "Triage priority: ROUTINE" in page and "FINDINGS:" in page
    assert "URGENT" not in page and "not calibrated" in page and "AUROC 0.81 (0.62&ndash;0.95)" in page
    assert "only 4 positives (needs 10)" in page and "threshold 0.00 flags every image" in page
    assert_no_phi_in_text(page, PLANTED_PHI)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(phi_dicom.read_bytes()[:3000])
    out = client.predict(handle_file(str(broken)), api_name="/load_upload")
    assert "broken.dcm: broken or unsupported DICOM file" in " ".join(str(x) for x in out)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    out = client.predict(handle_file(str(text)), api_name="/load_upload")
    assert "not an image this demo reads" in " ".join(str(x) for x in out)
    out = client.predict("lung", 40.0, 400.0, 0, api_name="/predict")  # no study in this session: nothing shown
    assert all(not x for x in out[:6]) and list(out[6:]) == [-600.0, 1500.0]  # the preset's numbers are shown
    leftovers = [p for p in app_server.temp_root.rglob("*") if p.is_file() and p.suffix in (".dcm", ".txt")]
    assert leftovers == [], f"uploads left on disk: {leftovers}"


@pytest.mark.browser
def test_browser_upload_findings_report_no_phi_and_error(app_server: Server, phi_dicom: Path, tmp_path: Path) -> None:
    sync_api = sync_playwright_api()
    url = app_server.url
    broken = tmp_path / "broken_upload.dcm"
    broken.write_bytes(phi_dicom.read_bytes()[:3000])
    screenshot = Path(os.environ.get("MEDCLIP_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            outside: list[str] = []
            page.on(
                "request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None
            )
            page.goto(url, wait_until="load")
            page.locator("input[data-testid='textbox']").fill(AUTH[0])
            page.locator("input[type='password']").fill(AUTH[1])
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("#research-notice", timeout=60_000)
            assert "NOT FOR DIAGNOSIS" in page.locator("#research-notice").inner_text()
            page.locator("#upload input[type=file]").set_input_files(str(phi_dicom))
            page.wait_for_selector("#ranked-findings tr.finding", timeout=60_000)
            assert page.locator("#ranked-findings tr.finding").count() == 14
            # the degenerate point (0.00 chosen on 4 positives) is shown as not calibrated, with the
            # reason, and cannot raise the priority (trusted, it made every upload "PRIORITY")
            effusion = page.locator("#ranked-findings tr.finding[data-concept='pleural_effusion']")
            assert effusion.get_attribute("data-status") == "not calibrated"
            assert effusion.get_attribute("data-can-raise-priority") == "false"
            reason = effusion.locator("td.operating-point").inner_text()
            assert "not calibrated" in reason and EFFUSION_REASON in reason
            assert "AUROC 0.81 (0.62–0.95)" in effusion.locator("td.validation").inner_text()
            assert "n 12, 4 pos, 8 neg" in effusion.locator("td.validation").inner_text()
            priority = page.locator("#triage-priority")
            assert priority.get_attribute("data-level") == "routine"
            text = priority.inner_text()
            assert "ROUTINE" in text and "PRIORITY" not in text and "URGENT" not in text
            not_calibrated = priority.locator(".not-calibrated").inner_text()
            assert "not calibrated, cannot set the priority:" in not_calibrated and "pleural effusion" in not_calibrated
            # a calibrated critical finding whose validation AUROC CI reaches below the floor is called, in the
            # units a clinician reads, but it is not flagged and cannot make the study urgent; the page says why
            pneumothorax = page.locator("#ranked-findings tr.finding[data-concept='pneumothorax']")
            assert pneumothorax.get_attribute("data-status") == "positive"
            assert pneumothorax.get_attribute("data-can-raise-priority") == "false"
            assert "urgent" not in pneumothorax.inner_text()
            point = pneumothorax.locator("td.operating-point").inner_text()
            assert "flags at probability ≥ 0.05" in point
            assert "validation sensitivity 0.80 (0.62–0.95), specificity 0.70 (0.58–0.81)" in point
            rule = pneumothorax.locator("td.priority-rule").inner_text()
            assert rule.startswith("no") and "validation AUROC CI lower bound 0.52 <= floor 0.60" in rule
            assert "too uncertain to set the priority: pneumothorax" in text
            cardiomegaly = page.locator("#ranked-findings tr.finding[data-concept='cardiomegaly']")
            assert cardiomegaly.get_attribute("data-can-raise-priority") == "true"
            assert cardiomegaly.locator("td.priority-rule").inner_text().startswith("yes")
            page.wait_for_function(
                "document.querySelector('#drafted-report textarea').value.length > 0", timeout=30_000
            )
            assert page.locator("#drafted-report textarea").input_value().startswith(("FINDINGS:", "IMPRESSION:"))
            assert page.locator("#similar-studies .similar-study").count() > 0
            assert "modality" in page.locator("#dicom-header").inner_text()
            page.screenshot(path=str(screenshot), full_page=True)
            content = page.content() + page.locator("#drafted-report textarea").input_value()
            assert_no_phi_in_text(content, PLANTED_PHI)

            page.locator("#upload button[aria-label='Clear']").first.click()
            page.locator("#upload input[type=file]").set_input_files(str(broken))
            error = page.wait_for_selector("#upload-error", timeout=30_000)
            assert "broken_upload.dcm: broken or unsupported DICOM file" in error.inner_text()

            page.locator("#example input").first.click()
            page.get_by_role("option").first.click()
            page.wait_for_selector("#ranked-findings tr.finding", timeout=60_000)  # still serving
            assert outside == [], f"the page made requests off localhost: {outside}"
        finally:
            browser.close()
    uploaded = [p for p in app_server.temp_root.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert uploaded == [], f"uploads left on disk: {uploaded}"
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def test_app_removes_its_temporary_folder_when_stopped(app_server: Server) -> None:
    assert any(app_server.temp_root.iterdir()), "the running app keeps its private folder under TMPDIR"
    app_server.proc.terminate()  # SIGTERM: the app exits cleanly and removes the folder
    assert app_server.proc.wait(timeout=30) == 0
    assert not any(app_server.temp_root.iterdir()), "the app's temporary folder must be removed when it stops"
