"""The demo under load (issue 19.6): what concurrent and broken uploads must not do.

The page is served in this process (``medclip.demo.app.start_page``: the same queue, thread and upload
settings as ``python app.py``) on a tiny random model. A client that disconnects in the middle of an
upload (with a Content-Length, or chunked) must leave no partial file in the demo's private temporary
folder, and the server must keep answering; uploads sent at once by several users must all succeed
with the answers each image gets alone. No timing is asserted (``benchmarks/demo_latency.py`` measures).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from medclip.demo import TriageEngine, UploadLimits
from medclip.model import create_model
from medclip.sample import SAMPLE_EXPORT

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

#: Four different bundled radiographs (320 x 320 JPEG DICOM).
IMAGES = [SAMPLE_EXPORT / f"study_000{i}" / "series_1" / "IM0001.dcm" for i in (1, 2, 3, 4)]
MARKER = b"medclip-partial-upload-marker-"
ENGINES: dict[str, TriageEngine] = {}  # the engine the page serves


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(url, the page's private temporary folder) of the page served in this process."""
    from medclip.demo import app

    torch.manual_seed(0)
    model_dir = create_model("tiny-test").eval().save_pretrained(tmp_path_factory.mktemp("load") / "model")
    threads = torch.get_num_threads()
    demo = app.start_page(
        ENGINES.setdefault("page", TriageEngine.load(model_dir)),
        port=0,
        limits=UploadLimits(max_upload_bytes=8 * 1024**2),
    )
    try:
        yield str(demo.local_url), app._TEMP_ROOT
    finally:
        demo.close()
        torch.set_num_threads(threads)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _holding_marker(root: Path) -> list[Path]:
    out = []
    for p in _files(root):
        try:
            if MARKER in p.read_bytes():
                out.append(p)
        except OSError:  # removed while we looked
            pass
    return out


def _partial_upload(url: str, *, chunked: bool) -> None:
    """Start a multipart upload to Gradio's upload route, send a third of the file, then hang up."""
    parsed = urlparse(url)
    boundary = "----medclipboundary7MA4YWxkTrZu0gW"
    payload = (MARKER * (3 * 1024**2 // len(MARKER)))[: 3 * 1024**2]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="cut.dcm"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    path = parsed.path.rstrip("/") + "/gradio_api/upload"
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(head) + len(payload) + len(tail)}"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n"
    ).encode()
    sent = head + payload[: len(payload) // 3]
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(request)
        sock.sendall(f"{len(sent):x}\r\n".encode() + sent + b"\r\n" if chunked else sent)
        time.sleep(1.0)  # the server streams the first part into its temporary file
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def _answer(client, image: Path) -> tuple:
    """``/load_upload``'s answer without what differs between two calls on the same image (the timing note)."""
    from gradio_client import handle_file

    out = client.predict(handle_file(str(image)), api_name="/load_upload")
    # (slice control, header, preview, status with the timing, priority, findings, report, similar, window)
    status = out[3]
    assert "upload-error" not in str(status) and "timing" in str(status), status
    # the preview's cache path names the SHA-256 of its PNG bytes: equal paths, equal pixels (reading the file
    # here could meet Gradio rewriting it in place for another user's identical preview)
    preview = out[2]
    pixels = preview["path"] if isinstance(preview, dict) else preview
    return (*out[:2], pixels, *out[4:])


def _differences(answers: list[tuple], expected: tuple) -> list[str]:
    """Which fields of which answers differ from ``expected`` (short, for the assertion message)."""
    out = []
    for k, answer in enumerate(answers):
        for i, (got, want) in enumerate(zip(answer, expected, strict=True)):
            if got != want:
                out.append(f"user {k} field {i}: {str(got)[:300]!r} != {str(want)[:300]!r}")
    return out


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_that_disconnects_mid_upload_leaves_no_temporary_file(page: tuple[str, Path], chunked: bool) -> None:
    from gradio_client import Client

    url, temp_root = page
    before = _files(temp_root)
    _partial_upload(url, chunked=chunked)
    deadline = time.monotonic() + 10
    while _holding_marker(temp_root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _holding_marker(temp_root) == [], "a partial upload stayed in the demo's temporary folder"
    assert not [p for p in _files(temp_root) - before if p.parent == temp_root]
    client = Client(url, verbose=False, download_files=False)  # the server still answers the next upload
    assert "ranked-findings" in " ".join(str(x) for x in _answer(client, IMAGES[0]))


def test_concurrent_uploads_get_the_answers_each_image_gets_alone(page: tuple[str, Path], tmp_path: Path) -> None:
    from gradio_client import Client

    url, temp_root = page
    images = []
    for i, source in enumerate(IMAGES):  # distinct names: the answers must not mix up whose image is whose
        images.append(tmp_path / f"user{i}.dcm")
        shutil.copy(source, images[-1])
    serial = [_answer(Client(url, verbose=False, download_files=False), image) for image in images]
    clients = [Client(url, verbose=False, download_files=False) for _ in images]
    with ThreadPoolExecutor(len(images)) as pool:
        rounds = [list(pool.map(_answer, clients, images)) for _ in range(2)]
    for answers in rounds:
        assert [_differences([a], s) for a, s in zip(answers, serial, strict=True)] == [[]] * len(serial)
    assert len({str(a) for a in serial}) > 1, "different images must get different answers"
    uploads = [p for p in _files(temp_root) if p.suffix == ".dcm"]
    assert uploads == [], f"uploads left on disk after they were read: {uploads}"
    assert os.environ.get("GRADIO_TEMP_DIR") == str(temp_root)


def test_users_who_send_the_same_file_at_once_all_get_its_answer(page: tuple[str, Path]) -> None:
    """Gradio stores identical uploads at one path: the first read must not remove it from under the others."""
    from gradio_client import Client

    url, temp_root = page
    alone = _answer(Client(url, verbose=False, download_files=False), IMAGES[1])
    clients = [Client(url, verbose=False, download_files=False) for _ in range(6)]
    with ThreadPoolExecutor(len(clients)) as pool:
        for _ in range(2):
            assert _differences(list(pool.map(_answer, clients, [IMAGES[1]] * len(clients))), alone) == []
    uploads = [p for p in _files(temp_root) if p.suffix == ".dcm"]
    assert uploads == [], f"uploads left on disk after they were read: {uploads}"


def test_the_preview_is_exactly_what_the_model_sees(page: tuple[str, Path]) -> None:
    """The preview travels losslessly (PNG; Gradio's default webp changed grey levels) and costs less to encode."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from medclip.demo import app, read_upload

    url, _ = page
    out = Client(url, verbose=False, download_files=False).predict(handle_file(str(IMAGES[2])), api_name="/load_upload")
    shown = np.asarray(Image.open(out[2]["path"]).convert("L"))
    expected = app._enlarge(ENGINES["page"].model_view(read_upload(IMAGES[2])))
    assert out[2]["path"].endswith(".png") and np.array_equal(shown, expected)


def test_kept_studies_are_bounded_by_bytes_least_recently_used_first() -> None:
    """Sessions keep a token; the decoded studies of all of them sit in one store bounded by bytes."""
    import numpy as np

    from medclip.demo import LoadedStudy, StudyStore
    from medclip.io import MedicalImage

    def study(mib: int) -> LoadedStudy:
        image = MedicalImage(np.zeros((mib * 1024, 256), np.float32), (1.0, 1.0), None, {}, "x")
        return LoadedStudy(image=image, kind="dicom", name="x.dcm")

    store = StudyStore(max_bytes=3 * 1024**2)
    a, b = store.put(study(1)), store.put(study(1))
    assert store.get(a) is not None  # a is now the most recently used
    c = store.put(study(2))
    assert store.get(b) is None and store.get(a) is not None and store.get(c) is not None
    assert store.nbytes == 3 * 1024**2
    d = store.put(study(1), replaces=c)  # a session's new upload replaces its study
    assert store.get(c) is None and store.nbytes == 2 * 1024**2 and len(store) == 2
    huge = store.put(study(8))  # the newest is always kept
    assert store.get(huge) is not None and len(store) == 1 and store.get(d) is None
    store.discard(huge)
    assert len(store) == 0 and store.nbytes == 0 and store.get(None) is None


def test_a_session_rewindows_its_own_study(page: tuple[str, Path]) -> None:
    from gradio_client import Client, handle_file

    url, _ = page
    client = Client(url, verbose=False, download_files=False)
    client.predict(handle_file(str(IMAGES[3])), api_name="/load_upload")
    out = client.predict("lung", 40.0, 400.0, 0, api_name="/predict")
    assert out[0] is not None and "ranked-findings" in str(out[3]) and list(out[6:]) == [-600.0, 1500.0]


def test_a_shared_upload_is_removed_after_its_last_read_and_never_during_an_upload() -> None:
    from medclip.demo.uploads import UploadRefs

    removed: list[str] = []
    refs = UploadRefs(remove=removed.append)
    refs.add(["/t/sha/a.dcm", "/t/sha/a.dcm"])  # two users sent the same bytes: one stored path
    assert refs.release("/t/sha/a.dcm") is False and removed == []
    refs.begin()  # an upload is being received (it may be renaming the same bytes into that folder)
    assert refs.release("/t/sha/a.dcm") is True and removed == []
    refs.end()
    assert removed == ["/t/sha/a.dcm"]
    refs.begin()
    refs.release("/t/sha/b.dcm")  # read, and meanwhile the upload in progress stores the same bytes again
    refs.add(["/t/sha/b.dcm"])
    refs.end()
    assert removed == ["/t/sha/a.dcm"] and refs.pending("/t/sha/b.dcm") == 1
