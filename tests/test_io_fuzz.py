"""Seeded mutation fuzz of the DICOM reader: every mutant loads or raises ImageReadError, nothing else.

Issue 21 (and the faults issue): real DICOM files of many transfer syntaxes, mutated by
``benchmarks/fuzz_dicom.py`` (truncations, flipped header bytes, flipped pixel bytes, overwritten
length fields, duplicated chunks). The mutants are read one after another in a child process, so an
abort in a C/C++ decoder is a counted failure of this test, not the end of pytest. The larger run
(>= 1,000 mutants, pylibjpeg-data too) is ``python benchmarks/fuzz_dicom.py``.

What earlier runs found is kept below as fixed files: a Rust decoder's panic (pyo3's PanicException is
a BaseException, so it went through every ``except Exception``) and pydicom's BytesLengthException
(not a ValueError; its message quotes raw header bytes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pydicom
import pytest

from medclip.io import ImageReadError, load_image

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_dicom", REPO / "benchmarks" / "fuzz_dicom.py")
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

ROOTS = [Path(pydicom.__file__).parent / "data" / "test_files"]
try:
    import data_store  # pydicom-data

    ROOTS.append(Path(data_store.__file__).parent / "data")
except ImportError:  # pragma: no cover - optional test dependency
    pass

#: One or two small files per transfer syntax (pydicom's own test files, pydicom-data where marked).
SEED_FILES = (
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated
    "MR_small_RLE.dcm",  # RLE
    "emri_small_RLE.dcm",  # RLE, multi-frame (pydicom-data)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, colour
    "JPEG-lossy.dcm",  # 12-bit JPEG Extended: GDCM in its worker
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG Lossless SV1 (pydicom-data)
    "JPEG-LL.dcm",  # JPEG Lossless SV1, 16-bit (pydicom-data)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "emri_small_jpeg_2k_lossless.dcm",  # JPEG 2000 lossless, multi-frame (pydicom-data)
)
MUTANTS = 300
SEED = 2024


def local_testdata(name: str) -> Path | None:
    """A pydicom / pydicom-data test file from disk (never pydicom's downloader)."""
    for root in ROOTS:
        path = root / name
        if path.is_file():
            return path
    return None


def test_mutator_is_deterministic_and_mutates() -> None:
    files = [str(local_testdata("CT_small.dcm"))]
    original = Path(files[0]).read_bytes()
    first = [fuzz.mutant(files, SEED, k) for k in range(20)]
    assert first == [fuzz.mutant(files, SEED, k) for k in range(20)]
    assert all(data != original for _, data, _ in first)
    assert {kind for _, _, kinds in first for kind in kinds} == set(fuzz.MUTATIONS)


def test_seeded_mutants_load_or_are_refused() -> None:
    files = [p for p in map(local_testdata, SEED_FILES) if p is not None]
    if len(files) < 10:
        pytest.skip("pydicom's test files are not on disk")
    outcomes = fuzz.run_mutants(files, MUTANTS, seed=SEED, hang_s=300)
    counts = fuzz.summarise(outcomes)
    wrong = {k: o for k, o in enumerate(outcomes) if o not in ("loaded", "refused", "gdcm_crash")}
    assert not wrong, (
        f"{len(wrong)} mutants neither loaded nor raised ImageReadError ({counts}); "
        f"reproduce one with benchmarks/fuzz_dicom.mutant(files, {SEED}, k): {dict(list(wrong.items())[:10])}"
    )
    assert counts["loaded"] > MUTANTS // 10 and counts["refused"] > MUTANTS // 10  # both sides exercised


def _overwritten(name: str, changes: dict[int, int], tmp_path: Path) -> Path:
    source = local_testdata(name)
    if source is None:
        pytest.skip(f"{name} not on disk (pydicom-data)")
    data = bytearray(source.read_bytes())
    for offset, value in changes.items():
        data[offset] = value
    path = tmp_path / f"fuzzed_{name}"
    path.write_bytes(bytes(data))
    return path


def test_a_rust_decoder_panic_is_an_image_read_error(tmp_path: Path) -> None:
    """16 bytes of an RLE stream overwritten: pylibjpeg-rle panics ("index out of bounds"); pyo3 raises that as
    PanicException, a BaseException, which went through the indexer's and the demo's ``except Exception``."""
    changes = {
        3161: 95, 3836: 117, 6700: 166, 10814: 249, 14639: 103, 15785: 78, 19965: 233, 21680: 38,
        25267: 184, 30835: 128, 31275: 214, 32835: 200, 37659: 73, 44616: 176, 46903: 200, 47332: 92,
    }  # fmt: skip
    path = _overwritten("emri_small_RLE.dcm", changes, tmp_path)
    ds = pydicom.dcmread(path)
    try:
        pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
        panicked = None
    except BaseException as exc:  # noqa: BLE001 - what the decoder raises is the point
        panicked = type(exc).__name__
    if panicked != "PanicException":
        pytest.skip(f"this pylibjpeg-rle does not panic on the file ({panicked})")
    with pytest.raises(ImageReadError, match="PanicException"):
        load_image(path)


def test_a_wrong_length_in_the_file_meta_is_an_image_read_error_without_header_bytes(tmp_path: Path) -> None:
    """The File Meta Group Length (UL) given 3 bytes: pydicom raises BytesLengthException (no ValueError) with the
    raw bytes that follow in its message."""
    path = _overwritten("CT_small.dcm", {138: 3}, tmp_path)
    with pytest.raises(ImageReadError, match="length does not fit its VR") as info:
        load_image(path)
    assert "\\x" not in info.value.reason and "b'" not in info.value.reason


def test_encapsulated_pixel_data_short_of_frames_is_an_image_read_error(tmp_path: Path) -> None:
    """Found by tests/test_fuzz_pipelines.py (seed 7, mutant 65): pydicom's frame generator ran dry and raised
    StopIteration, which passed the demo's upload path (the indexer only named it 'StopIteration')."""
    files = [str(p) for p in map(local_testdata, SEED_FILES) if p is not None]
    if len(files) < len(SEED_FILES):
        pytest.skip("pydicom's and pydicom-data's test files are not all on disk")
    _, data, _ = fuzz.mutant(files, 7, 65)
    path = tmp_path / "short_of_frames.dcm"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match="fewer frames than Number of Frames"):
        load_image(path)
