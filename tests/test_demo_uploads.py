"""Demo uploads and triage logic: limits, zip safety, de-identified header, operating points, priority, cards."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from phi import assert_no_phi_in_text
from PIL import Image

from medclip.demo import UploadError, UploadLimits, extract_zip, rank_findings, read_upload, triage_priority
from medclip.demo.render import render_findings, render_header, render_priority
from medclip.demo.triage import concept_card
from medclip.demo.uploads import bundled_examples
from medclip.knowledge import Graph
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DICOM = SAMPLE_EXPORT_DIR / "study_0001" / "series_1" / "IM0001.dcm"
PLANTED_PHI = ("Zzplanted", "Quinn", "MRN000102X", "ACC0000001", "19420413", "Zzplanted General Hospital")


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_dicom_upload_header_is_deidentified_like_the_indexer() -> None:
    study = read_upload(SAMPLE_DICOM)
    assert study.kind == "dicom" and study.windowable and not study.image.is_volume
    text = repr(study.header) + repr(study.image.metadata) + study.image.source
    assert_no_phi_in_text(text, PLANTED_PHI)
    ds = pydicom.dcmread(SAMPLE_DICOM, stop_before_pixels=True)
    from medclip.deid import hash_identifier

    assert study.header["study_id"] == hash_identifier(ds.StudyInstanceUID)
    assert study.header["modality"] == "DX" and study.header["rows"] == 320
    html = render_header(study.header)
    assert_no_phi_in_text(html, PLANTED_PHI)


def test_png_and_jpeg_uploads_are_display_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    for ext in ("png", "jpeg"):
        path = tmp_path / f"x.{ext}"
        Image.fromarray(pixels).save(path)
        study = read_upload(path)
        assert study.kind == "raster" and not study.windowable
        assert (
            study.image.array.shape == (300, 200) and 0.0 <= study.image.array.min() <= study.image.array.max() <= 1.0
        )


def test_non_image_and_broken_dicom_get_clear_messages(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n" * 20)
    with pytest.raises(UploadError, match=r"notes.txt: not an image this demo reads"):
        read_upload(text)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(SAMPLE_DICOM.read_bytes()[:2000])  # header intact, pixel data cut off
    with pytest.raises(UploadError, match=r"broken.dcm: broken or unsupported DICOM file"):
        read_upload(broken)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(UploadError, match="empty"):
        read_upload(empty)


def test_size_and_pixel_limits(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="over the upload limit"):
        read_upload(SAMPLE_DICOM, limits=UploadLimits(max_upload_bytes=1000))
    with pytest.raises(UploadError, match="exceeds the limit of 0 megapixels"):
        read_upload(SAMPLE_DICOM, limits=UploadLimits(max_pixels=100_000))  # 320 x 320 = 102,400
    big = tmp_path / "big.png"
    Image.new("L", (2000, 1500)).save(big)
    with pytest.raises(UploadError, match="2000 pixels exceeds"):
        read_upload(big, limits=UploadLimits(max_pixels=1_000_000))


def test_empty_zip_traversal_and_bomb_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(UploadError, match="empty.zip: the zip archive is empty"):
        read_upload(empty)
    evil = _zip(tmp_path / "evil.zip", {"ok.dcm": SAMPLE_DICOM.read_bytes(), "../../escape.dcm": b"x" * 10})
    with pytest.raises(UploadError, match="path traversal"):
        read_upload(evil, workdir=tmp_path)
    assert not (tmp_path.parent / "escape.dcm").exists() and not list(tmp_path.glob("medclip-upload-*"))
    absolute = _zip(tmp_path / "abs.zip", {"/etc/evil.dcm": b"x"})
    with pytest.raises(UploadError, match="path traversal"):
        read_upload(absolute)
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.dcm": bytes(30 * 1024**2)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UploadError, match="decompression bomb"):
        read_upload(bomb, workdir=tmp_path)
    with pytest.raises(UploadError, match="decompression bomb"):
        read_upload(bomb, limits=UploadLimits(max_unzipped_bytes=10 * 1024**2, max_compression_ratio=1e9))
    assert not list(tmp_path.glob("medclip-upload-*")), "the extraction folder must be removed after a failure"
    junk = _zip(tmp_path / "junk.zip", {"readme.txt": b"hello"})
    with pytest.raises(UploadError, match="no DICOM series"):
        read_upload(junk)


def test_extract_zip_counts_bytes_while_inflating(tmp_path: Path) -> None:
    """A member whose header understates its size is still stopped by the running total."""
    path = _zip(tmp_path / "a.zip", {"a.bin": np.random.default_rng(0).bytes(3 * 1024**2)}, zipfile.ZIP_STORED)
    files = extract_zip(path, tmp_path / "out")
    assert [f.name for f in files] == ["a.bin"] and files[0].stat().st_size == 3 * 1024**2
    with pytest.raises(UploadError, match="limit"):
        extract_zip(path, tmp_path / "out2", UploadLimits(max_unzipped_bytes=1024**2))


def test_zipped_single_dicom_and_zipped_4d_series(tmp_path: Path, shared_dir: Path) -> None:
    single = _zip(tmp_path / "one.zip", {"study/IM0001.dcm": SAMPLE_DICOM.read_bytes()})
    study = read_upload(single, workdir=tmp_path)
    assert study.kind == "dicom" and study.image.array.shape == (320, 320)
    series_dir = shared_dir / "data" / "dicom_series_nih" / "In" / "20180918GE" / "mr_0004"
    if not series_dir.is_dir():
        pytest.skip(f"{series_dir} not found")
    members = {f"series/{f.name}": f.read_bytes() for f in sorted(series_dir.glob("*.dcm"))}
    study = read_upload(_zip(tmp_path / "series.zip", members), workdir=tmp_path)
    assert study.kind == "dicom_series" and study.image.is_volume and study.n_slices > 1
    assert study.header.get("volumes", 1) > 1  # 4D fMRI: the first volume is shown, the header says how many
    assert not list(tmp_path.glob("medclip-upload-*"))


def test_operating_points_and_uncertain_band(graph: Graph) -> None:
    findings = ["pneumothorax", "pleural_effusion", "cardiomegaly", "no_finding"]
    probs = [0.30, 0.62, 0.52, 0.10]
    thresholds = {
        "pneumothorax": 0.2,
        "pleural_effusion": 0.7,
        "cardiomegaly": 0.5,
    }  # no_finding: none (not calibrated)
    ranked = rank_findings(probs, findings, graph, thresholds, margin=0.05)
    by_id = {r.concept_id: r for r in ranked}
    assert by_id["pneumothorax"].status == "positive" and by_id["pneumothorax"].threshold == 0.2
    assert by_id["pleural_effusion"].status == "negative"  # 0.62 < 0.7 - 0.05
    assert by_id["cardiomegaly"].status == "uncertain" and by_id["cardiomegaly"].threshold == 0.5
    assert by_id["no_finding"].status == "not calibrated"
    assert ranked[0].concept_id == "pneumothorax"  # flagged urgent first though not the most probable
    assert [r.concept_id for r in ranked[1:]] == ["pleural_effusion", "cardiomegaly", "no_finding"]
    assert triage_priority(ranked).level == "urgent" and triage_priority(ranked).reasons == ("pneumothorax",)
    html = render_findings(ranked) + render_priority(triage_priority(ranked))
    assert "URGENT" in html and "flags at probability &ge; 0.20" in html and "uncertain 0.15&ndash;0.25" in html
    assert "(set by hand, not validated)" in html  # bare numbers: no validation sensitivity / specificity to show


def test_priority_levels(graph: Graph) -> None:
    findings = ["pneumothorax", "pleural_effusion", "scoliosis"]
    half = dict.fromkeys(findings, 0.5)  # operating points set by hand (without any, nothing sets the priority)
    routine = triage_priority(rank_findings([0.1, 0.2, 0.9], findings, graph, half))
    assert routine.level == "routine"
    significant = triage_priority(rank_findings([0.1, 0.9, 0.9], findings, graph, half))
    assert significant.level == "priority" and significant.reasons == ("pleural effusion",)
    review = triage_priority(rank_findings([0.5, 0.1, 0.1], findings, graph, half))  # uncertain pneumothorax
    assert review.level == "priority" and review.review == ("pneumothorax",)
    with pytest.raises(ValueError, match="3 findings"):
        rank_findings([0.1, 0.2], findings, graph)


def test_concept_card_has_definition_synonyms_appearance_and_sources(graph: Graph) -> None:
    card = concept_card(graph, "pleural_effusion")
    assert card.definition and card.appearance and card.sources
    assert any("Human Phenotype Ontology" in s or "curated" in s for s in card.sources)
    assert card.name not in card.synonyms


def test_bundled_examples_are_readable() -> None:
    examples = bundled_examples(limit=3)
    assert len(examples) == 3
    for label, path in examples.items():
        assert_no_phi_in_text(label, PLANTED_PHI)
        assert read_upload(path).image.array.size > 0


def test_drafting_text_keeps_sections_and_drops_redacted_sentences() -> None:
    from medclip.inference.drafting import drafting_text

    record = {
        "report_findings": "Patient XXXX XXXX. Small left effusion. Seen on XXXX.",
        "report_impression": "Effusion.",
        "report_text": "ignored when sections exist",
    }
    assert drafting_text(record) == "FINDINGS: Small left effusion.\nIMPRESSION: Effusion."
    assert drafting_text({"report_text": "Patient XXXX. Lungs clear."}) == "FINDINGS: Lungs clear."
    assert drafting_text({"report_findings": "Patient XXXX XXXX."}) == ""
