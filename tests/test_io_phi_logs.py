"""No file name, path or header value reaches a log or a warning while files are read (issue 12.3)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medclip.io import ImageReadError, load_image, phi_safe_reading
from medclip.io.guard import sanitize_reader_message

PLANTED = "Zqxpatient_Janedoe"


@pytest.fixture
def planted_file(tmp_path: Path) -> Path:
    """A truncated JPEG-compressed DICOM (pydicom's own test file) named after a patient."""
    src = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    path = tmp_path / f"{PLANTED}.dcm"
    data = src.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return path


def _leaks(caplog, recwarn) -> list[str]:
    texts = [r.getMessage() for r in caplog.records] + [str(r.name) for r in caplog.records]
    texts += [str(w.message) for w in recwarn] + [str(w.filename) for w in recwarn]
    return [t for t in texts if PLANTED.lower() in t.lower()]


def test_planted_file_warns_with_its_name_without_the_guard(planted_file: Path) -> None:
    """The hostile input is real: pydicom itself names the file in its warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pydicom.dcmread(planted_file)
    assert any(PLANTED in str(w.message) for w in caught)


def test_reader_warnings_never_name_the_file(planted_file: Path, caplog, recwarn) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImageReadError):
        load_image(planted_file)
    assert _leaks(caplog, recwarn) == []
    sanitized = [r for r in caplog.records if r.name == "medclip.io"]
    assert sanitized and "truncated" in sanitized[0].getMessage()


def test_pydicom_log_records_are_sanitised(caplog, recwarn) -> None:
    """Records sent to pydicom's loggers (and children) never reach the root logger raw."""
    import medclip.io  # noqa: F401  (installs the logger guard)

    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '19701231' in file %s", PLANTED)
    logging.getLogger("pydicom.pixels.decoders.base").error("cannot decode /x/%s.dcm", PLANTED)
    assert _leaks(caplog, recwarn) == []
    messages = {(r.name, r.levelname, r.getMessage()) for r in caplog.records}
    assert ("pydicom", "WARNING", "header value does not match its VR (file name and values withheld)") in messages


def test_indexer_and_upload_paths_are_guarded(planted_file: Path, tmp_path: Path, caplog, recwarn) -> None:
    from medclip.data.indexer import index_export
    from medclip.demo.uploads import UploadError, read_upload

    caplog.set_level(logging.DEBUG)
    res = index_export(planted_file.parent, tmp_path / "out" / "m.parquet", salt="s", workers=1, progress=False)
    assert sum(res.skipped.values()) == 1
    with pytest.raises(UploadError):
        read_upload(planted_file, name="upload.dcm")
    assert _leaks(caplog, recwarn) == []


def test_guard_nests_and_restores() -> None:
    before = list(warnings.filters)
    with phi_safe_reading():
        with phi_safe_reading():
            warnings.warn(f"file {PLANTED}", UserWarning, stacklevel=1)
    assert warnings.filters == before
    assert sanitize_reader_message(f"End of file reached in {PLANTED}") == "file ends early (truncated)"
    assert PLANTED.lower() not in sanitize_reader_message(f"weird {PLANTED}").lower()


def test_error_reasons_never_repeat_the_path(tmp_path: Path) -> None:
    """A reader's exception text that repeats the path is cleaned: ``reason`` may be logged, the message names the file."""
    path = tmp_path / f"{PLANTED}.png"
    error = ImageReadError(path, f"cannot identify image file '{path}' ({PLANTED}.png)")
    assert PLANTED not in error.reason and "<file>" in error.reason
    assert PLANTED in str(error)  # the person who asked to read the file is told which one
    import pickle

    assert pickle.loads(pickle.dumps(error)).reason == error.reason


def test_guard_is_safe_across_threads(planted_file: Path, caplog, recwarn) -> None:
    """Concurrent reads (demo requests run in threads) never leak the name and leave the warning state as found."""
    from concurrent.futures import ThreadPoolExecutor

    caplog.set_level(logging.DEBUG)
    before_filters, before_show = list(warnings.filters), warnings.showwarning

    def read(_: int) -> str:
        try:
            load_image(planted_file)
        except ImageReadError as exc:
            return exc.reason
        return ""

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(read, range(32)))
    assert all(reasons) and not any(PLANTED in r for r in reasons)
    assert _leaks(caplog, recwarn) == []
    assert warnings.filters == before_filters and warnings.showwarning is before_show
