"""The triage demo end to end: engine + gallery on a tiny random model, the CLI, Gradio, and a real browser.

The browser test starts ``python app.py`` on a free localhost port, drives Debian's Chromium with
Playwright (no browser download), uploads a DICOM with planted PHI, waits for the ranked findings
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
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medclip.demo import Gallery, GalleryError, TriageEngine, UploadLimits, build_gallery, read_upload
from medclip.demo.cli import NO_CHECKPOINT_HELP, add_demo_arguments, find_checkpoint, parse_auth, run_demo
from medclip.eval.thresholds import save_thresholds
from medclip.model import create_model

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "datasets" / "sample" / "export"
SAMPLE_DICOM = EXPORT / "study_0001" / "series_1" / "IM0001.dcm"
#: Planted in the sample (name, MRN, accession, birth date, institution) plus a referring physician we add.
PLANTED_PHI = ("Zzplanted", "Quinn", "MRN000102X", "ACC0000001", "19420413", "Zzreferrer")
CHROMIUM = Path("/usr/bin/chromium")
N_STUDIES = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model folder with calibrated thresholds and a gallery from part of the indexed sample."""
    from medclip.data.indexer import index_export

    root = tmp_path_factory.mktemp("demo")
    export = root / "export"
    export.mkdir()
    for study in sorted(p for p in EXPORT.iterdir() if p.is_dir())[:N_STUDIES]:
        shutil.copytree(study, export / study.name)
    shutil.copy(EXPORT / "reports.csv", export / "reports.csv")
    index_export(export, root / "manifest.parquet", reports=export / "reports.csv", fractions=(1.0, 0.0, 0.0),
                 workers=1, progress=False)
    torch.manual_seed(0)
    model = create_model("tiny-test").eval()
    model_dir = model.save_pretrained(root / "model")
    save_thresholds(model_dir, {"pneumothorax": 0.0, "pleural_effusion": 0.8}, uncertain_margin=0.05)
    build_gallery(model, root / "manifest.parquet", model_dir / "gallery")
    return model_dir


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> TriageEngine:
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
    assert all(phi not in text for phi in PLANTED_PHI)
    assert len(list((checkpoint / "gallery" / "thumbnails").glob("*.png"))) == len(gallery)
    torch.manual_seed(1)
    with pytest.raises(GalleryError, match="another model"):
        Gallery.load(checkpoint / "gallery", create_model("tiny-test"))


def test_engine_triage_on_a_real_dicom(engine: TriageEngine, phi_dicom: Path) -> None:
    study = read_upload(phi_dicom)
    view, result = engine.triage(study)
    assert view.shape == (64, 64) and view.dtype == np.uint8
    assert len(result.findings) == 14
    # thresholds.json of the checkpoint: pneumothorax at 0.0 is positive and urgent, so it is flagged first
    top = result.findings[0]
    assert top.concept_id == "pneumothorax" and top.status == "positive" and top.threshold == 0.0
    assert result.priority.level == "urgent"
    rest = [f.probability for f in result.findings[1:]]
    assert rest == sorted(rest, reverse=True)
    effusion = next(f for f in result.findings if f.concept_id == "pleural_effusion")
    assert effusion.threshold == 0.8
    assert result.similar and result.similar[0].score >= result.similar[-1].score
    assert len({m.study_id for m in result.similar}) == len(result.similar)
    assert result.report_text.startswith("FINDINGS:") or result.report_text.startswith("IMPRESSION:")
    everything = repr(result) + repr(study.header)
    assert all(phi not in everything for phi in PLANTED_PHI)


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
    shutil.copytree(checkpoint, bare, ignore=shutil.ignore_patterns("gallery", "thresholds.json"))
    engine = TriageEngine.load(bare, findings=["pneumothorax", "pleural_effusion"])
    assert engine.gallery is None and "--build-gallery" in engine.gallery_note and "0.5" in engine.gallery_note
    _, result = engine.triage(read_upload(SAMPLE_DICOM))
    assert result.similar == [] and result.report_text == ""


def test_cli_without_checkpoint_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import argparse

    import medclip.demo.cli as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path)
    args = add_demo_arguments(argparse.ArgumentParser()).parse_args([])
    assert find_checkpoint(None) is None
    assert run_demo(args, serve=lambda *a, **k: pytest.fail("must not serve without a checkpoint")) == 1
    assert "medclip quickstart" in capsys.readouterr().err
    assert "medclip quickstart" in NO_CHECKPOINT_HELP


def test_cli_options_and_auth(engine: TriageEngine, checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    import argparse

    import medclip.demo.cli as cli

    parser = argparse.ArgumentParser()
    cli.add_demo_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--checkpoint", str(checkpoint), "--port", "0", "--auth", "ann:secret",
                              "--max-upload-mb", "1"])
    assert args.host == "127.0.0.1" and parse_auth(args.auth) == ("ann", "secret")
    with pytest.raises(ValueError):
        parse_auth("nopassword")
    seen: dict = {}

    def fake_serve(engine: TriageEngine, **kwargs) -> int:
        seen.update(kwargs, engine=engine)
        return 0

    monkeypatch.setattr(cli, "load_engine", lambda a: engine if a.checkpoint == checkpoint else pytest.fail("wrong checkpoint"))
    assert args.func(args, serve=fake_serve) == 0
    assert seen["auth"] == ("ann", "secret") and seen["host"] == "127.0.0.1" and seen["engine"] is engine
    assert isinstance(seen["limits"], UploadLimits) and seen["limits"].max_upload_bytes == 1024**2

    def broken_gallery(a: Namespace) -> TriageEngine:
        raise GalleryError(f"{a.gallery}: not a gallery folder")

    monkeypatch.setattr(cli, "load_engine", broken_gallery)
    assert run_demo(Namespace(**{**vars(args), "gallery": checkpoint / "nowhere"}), serve=fake_serve) == 2
    assert "nowhere: not a gallery folder" in capsys.readouterr().err
    with pytest.raises(GalleryError, match="not a gallery folder"):
        Gallery.load(checkpoint / "nowhere")


def test_gradio_page_callbacks(engine: TriageEngine, phi_dicom: Path, tmp_path: Path) -> None:
    """Gradio's own client against the page in-process, behind basic auth: upload, error paths, window preset."""
    app = pytest.importorskip("app", reason="app.py not importable")
    from gradio_client import Client, handle_file

    demo = app.build_demo(engine, UploadLimits(max_upload_bytes=10 * 1024**2))
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            ssr_mode=False, quiet=True, auth=("ann", "secret"))
    try:
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url + "config", timeout=10)  # basic auth guards the page
        client = Client(url, verbose=False, download_files=False, auth=("ann", "secret"))
        out = client.predict(handle_file(str(phi_dicom)), api_name="/load_upload")
        page = " ".join(str(x) for x in out)
        assert "ranked-findings" in page and "Triage priority: URGENT" in page and "FINDINGS:" in page
        assert all(phi not in page for phi in PLANTED_PHI)
        broken = tmp_path / "broken.dcm"
        broken.write_bytes(phi_dicom.read_bytes()[:3000])
        out = client.predict(handle_file(str(broken)), api_name="/load_upload")
        assert "broken.dcm: broken or unsupported DICOM file" in " ".join(str(x) for x in out)
        text = tmp_path / "notes.txt"
        text.write_text("hello")
        out = client.predict(handle_file(str(text)), api_name="/load_upload")
        assert "not an image this demo reads" in " ".join(str(x) for x in out)
        out = client.predict("lung", 40.0, 400.0, 0, api_name="/predict")  # no study in this session: empty
        assert all(not x for x in out[:6])
        leftovers = [p for p in app._TEMP_ROOT.rglob("*") if p.is_file() and p.suffix in (".dcm", ".txt")]
        assert leftovers == [], f"uploads left on disk: {leftovers}"
    finally:
        demo.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app.py did not answer on {url} within {timeout:.0f} s")


@pytest.mark.browser
def test_browser_upload_findings_report_no_phi_and_error(checkpoint: Path, phi_dicom: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TMPDIR": str(temp_root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--checkpoint", str(checkpoint), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    broken = tmp_path / "broken_upload.dcm"
    broken.write_bytes(phi_dicom.read_bytes()[:3000])
    screenshot = Path(os.environ.get("MEDCLIP_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    try:
        _wait_for_server(url, proc)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                outside: list[str] = []
                page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith((url, "data:", "blob:")) else None)
                page.goto(url, wait_until="load")
                assert "NOT FOR DIAGNOSIS" in page.locator("#research-notice").inner_text()
                page.locator("#upload input[type=file]").set_input_files(str(phi_dicom))
                page.wait_for_selector("#ranked-findings tr.finding", timeout=60_000)
                assert page.locator("#ranked-findings tr.finding").count() == 14
                assert page.locator("#ranked-findings tr.finding").first.get_attribute("data-concept") == "pneumothorax"
                assert "URGENT" in page.locator("#triage-priority").inner_text()
                page.wait_for_function("document.querySelector('#drafted-report textarea').value.length > 0",
                                       timeout=30_000)
                assert page.locator("#drafted-report textarea").input_value().startswith(("FINDINGS:", "IMPRESSION:"))
                assert page.locator("#similar-studies .similar-study").count() > 0
                assert "modality" in page.locator("#dicom-header").inner_text()
                page.screenshot(path=str(screenshot), full_page=True)
                content = page.content() + page.locator("#drafted-report textarea").input_value()
                for phi in PLANTED_PHI:
                    assert phi not in content, f"planted PHI {phi!r} reached the page"

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
        uploaded = [p for p in temp_root.rglob("*") if p.is_file() and p.suffix == ".dcm"]
        assert uploaded == [], f"uploads left on disk: {uploaded}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    assert not any(temp_root.iterdir()), "the app's temporary folder must be removed when it stops"
