"""Starting the demo: stale temporary folders cleaned, gallery progress shown, no public-link advice,
oversized uploads refused before their body is read.

One ``python app.py --build-gallery MANIFEST`` process on a tiny random model (started once for the
module) is checked from outside: its temporary root, a raw HTTP upload that announces 10 GiB, and
everything it printed from start to stop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medclip.demo.uploads import UploadSizeLimit
from medclip.sample import SAMPLE_EXPORT as SAMPLE_EXPORT_DIR

REPO = Path(__file__).resolve().parents[1]
EXPORT = SAMPLE_EXPORT_DIR


# -- the ASGI guard on its own -------------------------------------------------------------------


def _run(
    guard: UploadSizeLimit, headers: list[tuple[bytes, bytes]], body_chunks: list[bytes]
) -> tuple[list[dict], int]:
    """Drive the middleware with one request; returns what it sent and how many body chunks it pulled."""
    sent: list[dict] = []
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        more = pulled < len(body_chunks)
        return {
            "type": "http.request",
            "body": body_chunks[pulled - 1] if pulled <= len(body_chunks) else b"",
            "more_body": more,
        }

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return sent, pulled


async def _read_all_then_ok(scope: dict, receive, send) -> None:
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_upload_guard_refuses_a_declared_oversize_without_reading_the_body() -> None:
    called = []

    async def app(scope: dict, receive, send) -> None:
        called.append(scope)

    guard = UploadSizeLimit(app, max_bytes=1024**2)
    sent, pulled = _run(guard, [(b"content-length", str(10 * 1024**3).encode())], [b"x" * 65536] * 3)
    assert sent[0]["status"] == 413 and b"over the limit of 1 MiB" in sent[1]["body"]
    assert pulled == 0 and called == [], "neither the body nor the app may be touched"
    sent, _ = _run(guard, [(b"content-length", b"nonsense")], [b""])
    assert sent[0]["status"] == 413


def test_upload_guard_stops_a_streamed_body_at_the_limit_and_passes_small_requests() -> None:
    guard = UploadSizeLimit(_read_all_then_ok, max_bytes=256 * 1024)
    sent, pulled = _run(guard, [], [b"x" * 65536] * 100)  # chunked: no Content-Length, 6.25 MiB
    assert sent[0]["status"] == 413 and pulled == 5  # 5 x 64 KiB > 256 KiB: stopped there
    sent, _ = _run(guard, [(b"content-length", b"131072")], [b"x" * 65536] * 2)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_read_upload_refuses_a_huge_file_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import io

    from medclip.demo import UploadError, UploadLimits, read_upload

    huge = tmp_path / "huge.dcm"
    with open(huge, "wb") as fh:
        fh.truncate(64 * 1024**3)  # sparse: 64 GiB announced, nothing on disk
    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def watch(opener):
        def wrapped(file, *args, **kwargs):
            if str(file) == str(huge):
                opened.append(str(file))
                raise AssertionError("the oversized upload was opened")
            return opener(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", watch(real_open))
    monkeypatch.setattr(io, "open", watch(real_io_open))
    with pytest.raises(UploadError, match=r"huge.dcm: the file is 65536 MiB, over the upload limit of 512 MiB"):
        read_upload(huge, limits=UploadLimits())
    assert opened == []


# -- the real start-up ---------------------------------------------------------------------------


@dataclass
class Started:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    root: Path  # medclip's temporary root as the app sees it
    live: Path
    stale: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    import torch

    from medclip import fsutil
    from medclip.data.indexer import index_export
    from medclip.model import create_model

    work = tmp_path_factory.mktemp("startup")
    export = work / "export"
    export.mkdir()
    for study in sorted(p for p in EXPORT.iterdir() if p.is_dir())[:3]:
        shutil.copytree(study, export / study.name)
    shutil.copy(EXPORT / "reports.csv", export / "reports.csv")
    index_export(
        export,
        work / "manifest.parquet",
        reports=export / "reports.csv",
        fractions=(1.0, 0.0, 0.0),
        workers=1,
        progress=False,
    )
    torch.manual_seed(0)
    model_dir = create_model("tiny-test").eval().save_pretrained(work / "model")
    tmp = work / "tmp"
    root = tmp / f"medclip-{os.getuid()}"
    root.mkdir(parents=True, mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f"proc-{dead.pid}-1"
    live = root / f"proc-{os.getpid()}-{fsutil._start_time(os.getpid())}"  # this test process: alive
    for folder in (stale, live):
        (folder / "uploads").mkdir(parents=True)
        (folder / "uploads" / "left.dcm").write_bytes(bytes(4096))
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TMPDIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MEDCLIP_DEMO_AUTH", None)
    log = work / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "app.py"),
                "--checkpoint",
                str(model_dir),
                "--port",
                str(port),
                "--build-gallery",
                str(work / "manifest.parquet"),
                "--max-upload-mb",
                "1",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Started(f"http://127.0.0.1:{port}/", port, proc, log, root, live, stale)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_until_serving(server: Started) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 240
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"app.py exited with {server.proc.returncode}: {server.log.read_text()}")
        try:
            with urllib.request.urlopen(server.url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer: {server.log.read_text()}")
            time.sleep(0.5)


def test_startup_removes_stale_temp_dirs_and_keeps_live_ones(started: Started) -> None:
    """Issue 12.12: folders of killed demos are removed at the next start; a running process keeps its own."""
    assert not started.stale.exists()
    assert (started.live / "uploads" / "left.dcm").is_file()
    own = [p for p in started.root.glob(f"proc-{started.proc.pid}-*") if p.is_dir()]
    assert len(own) == 1 and (own[0] / "gradio").is_dir(), "Gradio's files live in the app's own folder"


def test_oversized_upload_is_refused_before_its_body_is_read(started: Started) -> None:
    """Issue 12.12: an upload that announces 10 GiB gets a 413 after 64 KiB were sent, not after 10 GiB."""
    with socket.create_connection(("127.0.0.1", started.port), timeout=30) as conn:
        conn.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=medclipboundary\r\n"
            + f"Content-Length: {10 * 1024**3}\r\n\r\n".encode()
            + b"\0" * 65536
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_startup_output_shows_gallery_progress_and_never_suggests_share(started: Started) -> None:
    """Issue 12.16: building the gallery shows progress; nothing printed suggests a public share link."""
    # Gradio answers HTTP a moment before it prints its URL line: wait for the line (bounded), then stop
    deadline = time.monotonic() + 60
    while "* Running on local URL:" not in started.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(timeout=30) == 0
    output = started.log.read_text()
    assert re.search(r"gallery: embedding images: 100%\|.*\| 3/3 ", output), output
    assert f"* Running on local URL:  {started.url.rstrip('/')}" in output
    assert "share=True" not in output and "public link" not in output.lower()
    assert not re.search(r"\bshare\b", output, re.IGNORECASE), output
    assert not any(started.root.glob(f"proc-{started.proc.pid}-*")), "a normal stop removes the app's folder"
