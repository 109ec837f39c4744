"""A DICOM file that makes GDCM abort the process costs that one file: never an index run, a cache run or the demo.

Issue 21: python-gdcm lets some C++ exceptions escape (``terminate called after throwing an instance of
'gdcm::Exception'``, from ``gdcmAttribute.h`` when a header element is not what GDCM's attribute template
expects) and the process ends with SIGABRT; nothing in Python can catch it. The file here is built from
pydicom-data's JPEG Lossless SV1 file with a kept seed: a few header bytes and a few bytes of the JPEG
stream's own headers changed. pylibjpeg refuses its pixels, so medclip used to hand it to GDCM's file
reader in its own process, and the process died. Now GDCM runs only in a worker process
(:mod:`medclip.io.gdcm_worker`).

Every step that could abort runs in a child process, so a regression fails these tests instead of
killing pytest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

gdcm = pytest.importorskip("gdcm", reason="python-gdcm (the [dicom] extra) not installed: nothing to isolate")

from medclip.io import ImageReadError, gdcm_worker, load_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = "JPGLosslessP14SV1_1s_1f_8b.dcm"  # pydicom-data: JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), 8-bit
SEED = 291  # found by mutating SOURCE until GDCM's reader aborted and medclip's old path reached it
TWELVE_BIT = "JPEG-lossy.dcm"  # 12-bit JPEG Extended: only GDCM's reader decodes it, so the worker must
ROOTS = [Path(pydicom.__file__).parent / "data" / "test_files"]
try:
    import data_store  # pydicom-data

    ROOTS.append(Path(data_store.__file__).parent / "data")
except ImportError:  # pragma: no cover - optional test dependency
    pass


def get_testdata_file(name: str) -> str:
    """A pydicom / pydicom-data test file from disk (pydicom's own lookup may download); skip when absent."""
    for root in ROOTS:
        if (root / name).is_file():
            return str(root / name)
    pytest.skip(f"{name} not on disk (pydicom-data)")


def aborting_bytes() -> bytes:
    """SOURCE with 1-8 header bytes and 1-4 bytes of the JPEG stream's first 200 bytes overwritten (seeded)."""
    data = Path(get_testdata_file(SOURCE)).read_bytes()
    pixels = data.rfind(b"\xe0\x7f\x10\x00")
    soi = data.find(b"\xff\xd8", pixels)
    rng = random.Random(SEED)
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(132, pixels)] = rng.randrange(256)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(soi + 2, soi + 200)] = rng.randrange(256)
    return bytes(buf)


def run_python(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (an abort there is a return code here)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def survived(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"the child process ended with {proc.returncode}"
        + (" (SIGABRT: GDCM ran in medclip's own process)" if proc.returncode == -signal.SIGABRT else "")
        + f"\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def aborting_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fuzzed file; this fixture proves it really aborts GDCM in process, so no test here passes vacuously."""
    path = tmp_path_factory.mktemp("gdcm-crash") / "fuzzed_jpeg_lossless.dcm"
    path.write_bytes(aborting_bytes())
    # the call medclip made before issue 21 (medclip.io.dicom_codecs._gdcm_decode): GDCM's file reader, in process
    raw = run_python("import sys, gdcm; r = gdcm.ImageReader(); r.SetFileName(sys.argv[1]); r.Read()", str(path))
    assert raw.returncode == -signal.SIGABRT, (
        f"GDCM's reader no longer aborts on seed {SEED} of {SOURCE} (status {raw.returncode}): another python-gdcm "
        "or pydicom-data? Find a new seed with benchmarks/fuzz_dicom.py and tests/test_io_gdcm_crash.aborting_bytes"
    )
    assert "gdcm::Exception" in raw.stderr and "gdcmAttribute.h" in raw.stderr
    # and the in-process decoders refuse its pixels, so load_image has to go to GDCM for it
    ds = pydicom.dcmread(path)
    with pytest.raises(Exception):  # noqa: B017 - pylibjpeg's own error type
        pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
    return path


def test_load_image_refuses_it_and_gdcm_still_decodes_the_next_file(aborting_file: Path) -> None:
    out = survived(
        run_python(
            """
            import json, sys
            from medclip.io import ImageReadError, gdcm_worker, load_image
            try:
                load_image(sys.argv[1])
                result = {"loaded": True}
            except ImageReadError as exc:
                result = {"message": str(exc), "reason": exc.reason}
            image = load_image(sys.argv[2], window=None)  # GDCM again: a fresh worker
            result["after"] = [float(image.array[420, 140]), float(image.array[230, 120])]
            print(json.dumps(result))
            """,
            str(aborting_file),
            get_testdata_file(TWELVE_BIT),
        )
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert "loaded" not in result
    assert gdcm_worker.CRASH_REASON in result["reason"] and "SIGABRT" in result["reason"]
    assert str(aborting_file) in result["message"] and str(aborting_file) not in result["reason"]
    assert result["after"] == [244.0, 95.0]  # pydicom's GDCM test values for JPEG-lossy.dcm


def test_a_file_that_aborts_pydicoms_own_gdcm_plugin(tmp_path: Path) -> None:
    """pydicom 3 tries its GDCM plugin first when python-gdcm is installed; on this fuzzed colour JPEG Lossless file
    (8 bytes of pydicom's SC_rgb_jpeg_gdcm.dcm changed, found by benchmarks/fuzz_dicom.py) that plugin aborts
    the process (gdcmJPEGBITSCodec.hxx). medclip removes the plugin in process: the file is read by pylibjpeg."""
    data = bytearray(Path(get_testdata_file("SC_rgb_jpeg_gdcm.dcm")).read_bytes())
    for offset, value in {146: 215, 233: 180, 255: 250, 588: 43, 717: 159, 753: 17, 912: 67, 1353: 169}.items():
        data[offset] = value
    path = tmp_path / "fuzzed_rgb_jpeg_lossless.dcm"
    path.write_bytes(bytes(data))
    plugin = run_python(
        "import sys, pydicom; pydicom.pixels.pixel_array(pydicom.dcmread(sys.argv[1]), decoding_plugin='gdcm')",
        str(path),
    )
    assert plugin.returncode == -signal.SIGABRT and "gdcm::Exception" in plugin.stderr
    out = survived(
        run_python(
            """
            import sys
            from medclip.io import ImageReadError, load_image
            try:
                print("loaded", load_image(sys.argv[1]).array.shape)
            except ImageReadError as exc:
                print("refused", exc.reason)
            """,
            str(path),
        )
    )
    assert out.startswith(("loaded", "refused"))


def test_gdcm_never_runs_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's GDCM plugin is gone from every decoder here, and nothing calls GDCM in process while
    compressed files of every codec load, the 12-bit one (GDCM only) included: it comes from the worker."""
    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            decoder = pydicom.pixels.get_decoder(uid)
        except NotImplementedError:
            continue
        assert "gdcm" not in decoder.available_plugins, uid.name
    calls: list[str] = []

    def forbidden(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} called in medclip's own process")

        return call

    for cls, method in ((gdcm.ImageReader, "Read"), (gdcm.Image, "GetBuffer"), (gdcm.ImageReader, "GetImage")):
        monkeypatch.setattr(cls, method, forbidden(f"gdcm.{cls.__name__}.{method}"))
    names = (
        TWELVE_BIT,
        SOURCE,
        "JPEG-LL.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG2000.dcm",
    )
    for name in names:
        image = load_image(get_testdata_file(name), window=None)
        assert np.isfinite(image.array).all(), name
    assert calls == []
    assert load_image(get_testdata_file(TWELVE_BIT), window=None).array[420, 140] == 244.0


def test_worker_timeout_memory_cap_and_concurrent_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    path = get_testdata_file(TWELVE_BIT)
    info = gdcm_worker.worker_info()
    assert info["memory_limit"] == gdcm_worker.MEMORY_LIMIT_BYTES  # RLIMIT_AS set in the worker
    # a decode that runs past its time (a stopped worker cannot answer) is stopped, the file refused;
    # the next call gets a fresh worker
    os.kill(info["pid"], signal.SIGSTOP)
    monkeypatch.setattr(gdcm_worker, "TIMEOUT_S", 0.5)
    with pytest.raises(ImageReadError, match="GDCM decoder took longer than 0.5 s on this file"):
        load_image(path, window=None)
    monkeypatch.undo()
    assert gdcm_worker.worker_info()["pid"] != info["pid"]
    # the demo's users call at once: the lock keeps one request at a time on the worker
    results: list[float] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(3):
                results.append(float(load_image(path, window=None).array[230, 120]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [95.0] * 12


@pytest.fixture(scope="module")
def runs(aborting_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One child process runs ``medclip index`` and ``medclip cache`` over an export holding the file and three
    good ones, then the demo's upload path on it and on a good file with a tiny model."""
    root = tmp_path_factory.mktemp("gdcm-crash-runs")
    export = root / "export"
    for patient, name in (("p1", "CT_small.dcm"), ("p2", "MR_small.dcm"), ("p3", TWELVE_BIT)):
        (export / patient).mkdir(parents=True)
        shutil.copy(get_testdata_file(name), export / patient / name)
    (export / "p4").mkdir()
    shutil.copy(aborting_file, export / "p4" / "fuzzed.dcm")
    code = """
        import json, sys
        from pathlib import Path
        import pandas as pd
        from medclip.cli import main

        root, export, bad, good = map(Path, sys.argv[1:5])
        out = {}
        # index, decoding every file (the default): the file is skipped and listed
        out["index_rc"] = main(["index", str(export), "-o", str(root / "m.parquet"), "--salt", "t", "--workers", "1", "-q"])
        out["index_rows"] = len(pd.read_parquet(root / "m.parquet"))
        out["skipped_csv"] = (root / "m.skipped.csv").read_text()
        # header-only index keeps the file in the manifest; the cache decodes it: skipped and counted
        main(["index", str(export), "-o", str(root / "h.parquet"), "--salt", "t", "--workers", "1", "--no-verify", "-q"])
        out["header_rows"] = len(pd.read_parquet(root / "h.parquet"))
        out["cache_rc"] = main(["cache", str(root / "h.parquet"), "-o", str(root / "cache"), "--image-size", "32",
                                "--workers", "1", "-q"])
        out["cache_json"] = json.loads((root / "cache" / "cache.json").read_text())
        # the demo's upload path, then the next upload on the same engine
        import torch
        from medclip.demo import TriageEngine, UploadError, read_upload
        from medclip.model import create_model

        torch.manual_seed(0)
        engine = TriageEngine(create_model("tiny-test", vision={"image_size": 32}).eval(), findings=["pneumonia"])
        try:
            read_upload(bad)
            out["upload"] = "loaded"
        except UploadError as exc:
            out["upload"] = str(exc)
        view, result = engine.triage(read_upload(good))
        out["next_upload"] = [list(view.shape), [f.concept_id for f in result.findings]]
        print(json.dumps(out))
    """
    proc = run_python(
        code, str(root), str(export), str(aborting_file), str(export / "p1" / "CT_small.dcm"), timeout=900
    )
    out = survived(proc)
    return json.loads(out.strip().splitlines()[-1])


def test_index_run_skips_and_counts_it_and_writes_the_manifest(runs: dict) -> None:
    assert runs["index_rc"] == 0
    assert runs["index_rows"] == 3  # the three good files
    lines = runs["skipped_csv"].strip().splitlines()
    assert lines[0] == "path,reason" and len(lines) == 2
    assert lines[1].startswith("p4/fuzzed.dcm,") and gdcm_worker.CRASH_REASON in lines[1]


def test_cache_run_skips_and_counts_it(runs: dict) -> None:
    assert runs["cache_rc"] == 0
    assert runs["header_rows"] == 4  # the header reads: the file reaches the cache
    cache = runs["cache_json"]
    assert sum(s["count"] for s in cache["shards"].values()) == 3
    assert len(cache["skipped"]) == 1
    assert gdcm_worker.CRASH_REASON in next(iter(cache["skipped"].values()))


def test_demo_upload_answers_with_a_message_and_serves_the_next(runs: dict) -> None:
    assert runs["upload"] != "loaded"
    assert runs["upload"].startswith("fuzzed_jpeg_lossless.dcm: broken or unsupported DICOM file: ")
    assert gdcm_worker.CRASH_REASON in runs["upload"]
    assert runs["next_upload"] == [[32, 32], ["pneumonia"]]
