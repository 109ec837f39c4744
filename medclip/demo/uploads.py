"""Uploads for the demo: size and pixel limits, safe zip extraction, reading into a :class:`MedicalImage`.

Everything a user uploads is read from (and extracted into) a temporary folder that is removed as
soon as the image is decoded; only the decoded pixels and non-PHI metadata stay in memory. Every
way an upload can be wrong (too big, not an image, broken DICOM, empty zip, a zip entry that
escapes its folder, a decompression bomb, too many pixels) raises :class:`UploadError` whose
message names the file and says what is wrong, so the app can show it and keep serving.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medclip.fsutil import process_temp_dir
from medclip.io import (
    ImageReadError,
    MedicalImage,
    MultiVolumeError,
    detect_format,
    load_image,
    phi_safe,
    read_dicom_series,
)
from medclip.io.dicom import find_dicom_series, is_dicom_file

__all__ = [
    "HEADER_FIELDS",
    "LoadedStudy",
    "StudyStore",
    "UploadError",
    "UploadLimits",
    "UploadRefs",
    "UploadSizeLimit",
    "bundled_examples",
    "expansion_budget",
    "extract_zip",
    "read_upload",
    "upload_workspace",
]

PathLike = str | os.PathLike[str]

#: Non-PHI header fields the demo shows, in display order (all come from
#: :func:`medclip.io.safe_metadata`, the indexer's de-identification: ids are salted hashes).
HEADER_FIELDS: tuple[str, ...] = (
    "format",
    "modality",
    "view_position",
    "body_part",
    "photometric",
    "rows",
    "columns",
    "frames",
    "volumes",
    "bits_stored",
    "pixel_spacing",
    "slice_thickness",
    "manufacturer",
    "transfer_syntax",
    "sex",
    "age_group",
    "study_id",
    "series_id",
    "image_id",
)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # local file header, empty archive
_CHUNK = 1 << 20


class UploadError(ValueError):
    """An upload the demo cannot use; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one upload may cost (bytes on disk, pixels in memory, zip expansion)."""

    max_upload_bytes: int = 512 * 1024**2
    max_pixels: int = 64_000_000  # one 2D image, e.g. 8000 x 8000
    max_voxels: int = 256 * 1024**2  # one volume (1 GiB as float32)
    max_zip_members: int = 5000
    max_unzipped_bytes: int = 2 * 1024**3  # all members together
    # A zip may expand at most this many times its own size, all members together (and each member
    # alone): deflate bombs reach ~1000; real DICOM rarely passes 20.
    max_compression_ratio: float = 200.0
    min_ratio_check_bytes: int = 1024**2  # below this, expansion is not held to the ratio (headers, blank masks)
    # Decoded studies the page keeps for re-windowing and slices, all users together (the newest always)
    max_kept_bytes: int = 2 * 1024**3


@dataclass
class LoadedStudy:
    """A decoded upload: the image (modality values when ``windowable``), its kind and safe header."""

    image: MedicalImage
    kind: str  # "dicom", "dicom_series", "nifti" or "raster"
    name: str  # the uploaded file's base name, for messages
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def windowable(self) -> bool:
        """True when the pixels are modality values (DICOM, NIfTI) that a window/level maps to display."""
        return self.image.metadata.get("window") is None

    @property
    def n_slices(self) -> int:
        """Slices along the first axis of a volume; 1 for a 2D image."""
        return int(self.image.array.shape[0]) if self.image.is_volume else 1


class StudyStore:
    """The decoded studies the page keeps between a user's events (window, slice), all sessions together,
    bounded by bytes: the least recently used is set aside first; the newest is always kept (thread-safe).

    A session keeps only a token; a token whose study was set aside gets None (the page asks for the
    upload again). Without the bound, every session kept its last study (up to ``max_pixels`` as
    float32, a volume up to ``max_voxels``) for its state's lifetime.
    """

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._studies: OrderedDict[str, tuple[LoadedStudy, int]] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the pixel arrays kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._studies)

    def put(self, study: LoadedStudy, replaces: str | None = None) -> str:
        """Keep ``study`` (dropping the session's previous one, ``replaces``); returns its token."""
        token = secrets.token_urlsafe(16)
        size = int(study.image.array.nbytes)
        with self._lock:
            self._drop(replaces)
            self._studies[token] = (study, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._studies) > 1:
                self._drop(next(iter(self._studies)))
        return token

    def get(self, token: str | None) -> LoadedStudy | None:
        """The study kept under ``token`` (None: never kept, set aside or discarded)."""
        if not token:
            return None
        with self._lock:
            kept = self._studies.get(token)
            if kept is None:
                return None
            self._studies.move_to_end(token)
            return kept[0]

    def discard(self, token: str | None) -> None:
        """Forget a session's study (its state expired or the session ended)."""
        with self._lock:
            self._drop(token)

    def _drop(self, token: str | None) -> None:
        if token and token in self._studies:
            self._bytes -= self._studies.pop(token)[1]


class UploadRefs:
    """Uploads received and not yet read, per stored path, and the upload requests in progress (thread-safe).

    Gradio stores an upload at ``<its folder>/<SHA-256 of the bytes>/<file name>``: two users who send the
    same file at once share one path, and the first to read it must not remove it while the other's read
    is still to come (that user got "cannot open the upload"), nor while an upload request is in progress
    (it may be renaming the same bytes into that folder, not yet counted). :class:`UploadSizeLimit` calls
    :meth:`begin` / :meth:`end` around each request to Gradio's upload route and :meth:`add` with the paths
    its answer names (before the client sees the answer); the page calls :meth:`release` after reading one.
    ``remove(path)`` removes a stored upload: at the release of its last read, or, when upload requests were
    in progress then, as the last of them ends.
    """

    def __init__(self, remove: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._receiving = 0
        self._deferred: set[str] = set()
        self._remove = remove

    @staticmethod
    def _key(path: PathLike) -> str:
        return os.path.normpath(os.fspath(path))

    def begin(self) -> None:
        """An upload request starts."""
        with self._lock:
            self._receiving += 1

    def end(self) -> None:
        """An upload request ended: with none left, remove the uploads whose last read was released meanwhile."""
        with self._lock:
            self._receiving -= 1
            if self._receiving == 0:
                for key in sorted(self._deferred):
                    if key not in self._pending:
                        self._removed(key)
                self._deferred.clear()

    def add(self, paths: list[str]) -> None:
        """Gradio stored these uploads (one entry per upload; a path twice: two uploads of the same bytes)."""
        with self._lock:
            for path in paths:
                key = self._key(path)
                self._pending[key] = self._pending.get(key, 0) + 1

    def release(self, path: PathLike) -> bool:
        """One read of ``path`` is done; True when no other upload of it waits (it is removed, or will be
        as soon as no upload request is in progress)."""
        key = self._key(path)
        with self._lock:
            left = self._pending.get(key, 1) - 1
            if left > 0:
                self._pending[key] = left
                return False
            self._pending.pop(key, None)
            if self._receiving:
                self._deferred.add(key)
            else:
                self._removed(key)
            return True

    def pending(self, path: PathLike) -> int:
        with self._lock:
            return self._pending.get(self._key(path), 0)

    def _removed(self, key: str) -> None:  # under the lock: no upload request can start meanwhile
        if self._remove is not None:
            self._remove(key)


class UploadSizeLimit:
    """ASGI middleware: answer 413 to a request bigger than ``max_bytes`` without reading its body whole,
    and leave no partial upload on disk when a request body is cut short.

    A request whose ``Content-Length`` says it is too big is refused before a byte of its body is read;
    a body sent without a length (chunked) is counted as it streams in and stopped at the limit.
    The demo wraps its Gradio server with it (``max_bytes``: the upload limit plus room for the form).

    ``upload_dir``: the folder Gradio streams uploads into (its ``GRADIO_TEMP_DIR``). Gradio writes each
    file of a multipart body into a temporary file directly in that folder and renames it into a
    per-upload subfolder once the body is complete; it removes the file when the form is malformed,
    not when the client disconnects mid-upload (or a chunked body passes the limit), so such a file
    stayed behind. When a body was cut short, the files directly in ``upload_dir`` are removed as soon
    as no POST request is in progress (at that moment none of them belongs to a request).

    ``refs``: counts the paths each answer of Gradio's upload route (``POST .../upload``) names (:class:`UploadRefs`).
    """

    def __init__(
        self, app: Any, max_bytes: int, upload_dir: PathLike | None = None, refs: UploadRefs | None = None
    ) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.upload_dir = Path(upload_dir) if upload_dir is not None else None
        self.refs = refs
        self._receiving = 0  # POST requests in progress (one event loop: no lock needed)
        self._aborted = False  # a body was cut short since the last sweep

    def _message(self) -> bytes:
        return (
            f"upload refused: over the limit of {self.max_bytes / 1024**2:.0f} MiB per request "
            "(medclip demo --max-upload-mb)"
        ).encode()

    async def _refuse(self, send: Any) -> None:
        body = self._message()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _count_stored(self, body: bytes) -> None:
        """Count the paths an upload answer (a JSON list of stored paths) names."""
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if self.refs is not None and isinstance(paths, list):
            self.refs.add([p for p in paths if isinstance(p, str)])

    def _sweep(self) -> None:
        """Remove the partial uploads Gradio left directly in ``upload_dir`` (called with no body in flight)."""
        self._aborted = False
        if self.upload_dir is None:
            return
        try:
            entries = list(os.scandir(self.upload_dir))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            except OSError:
                pass

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit() or int(length) > self.max_bytes:
                await self._refuse(send)
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        received = 0
        started = False
        done = False  # the whole body was received
        counting = self.refs is not None and str(scope.get("path", "")).rstrip("/").endswith("/upload")
        status = 0
        answer = bytearray()

        async def counted_receive() -> dict:
            nonlocal received, done
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if length is None and received > self.max_bytes:
                    raise _TooLarge
                done = done or not message.get("more_body", False)
            elif message.get("type") == "http.disconnect" and not done:
                self._aborted = True
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started, status
            if message.get("type") == "http.response.start":
                started, status = True, int(message.get("status", 0))
            elif counting and status == 200 and message.get("type") == "http.response.body":
                answer.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._count_stored(bytes(answer))  # before the client can ask for the file to be read
            await send(message)

        self._receiving += 1
        if counting and self.refs is not None:
            self.refs.begin()
        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            self._aborted = True
            if started:
                raise
            await self._refuse(send)
        except BaseException as exc:
            if not done:
                self._aborted = True
                if type(exc).__name__ == "ClientDisconnect":  # starlette's: the client went away mid-body
                    return  # nobody to answer; without this, each cancelled upload printed a traceback
            raise
        finally:
            self._receiving -= 1
            if counting and self.refs is not None:
                self.refs.end()
            if self._aborted and self._receiving == 0:
                self._sweep()


class _TooLarge(Exception):
    """A streamed request body passed :class:`UploadSizeLimit`'s bound."""


def safe_header(image: MedicalImage) -> dict[str, Any]:
    """The header fields the demo shows: the reader's non-PHI metadata, in :data:`HEADER_FIELDS` order."""
    meta = image.metadata
    return {key: meta[key] for key in HEADER_FIELDS if meta.get(key) not in (None, "", [])}


@contextmanager
def upload_workspace(root: PathLike | None = None) -> Iterator[Path]:
    """A private temporary folder (mode 0700) removed with everything in it on exit.

    Default ``root``: this process's folder under medclip's temporary root
    (:func:`medclip.fsutil.process_temp_dir`), which the next start removes if this process is killed.
    """
    path = Path(
        tempfile.mkdtemp(prefix="medclip-upload-", dir=root if root is not None else process_temp_dir("uploads"))
    )
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _member_target(root: Path, info: zipfile.ZipInfo, name: str) -> Path:
    """Where a zip member may be written, or UploadError if it would leave ``root`` or is a link."""
    member = info.filename.replace("\\", "/")
    parts = PurePosixPath(member).parts
    if member.startswith("/") or (parts and (":" in parts[0])) or ".." in parts:
        raise UploadError(name, f"zip entry {info.filename!r} points outside the archive (path traversal); refused")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(name, f"zip entry {info.filename!r} is a symbolic link; refused")
    target = (root / member).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UploadError(name, f"zip entry {info.filename!r} points outside the archive (path traversal); refused")
    return target


def expansion_budget(archive_bytes: int, limits: UploadLimits = UploadLimits()) -> int:
    """The most bytes a zip of ``archive_bytes`` may expand to, all members together.

    ``max_compression_ratio`` times the archive's size (real DICOM series compress a few times; a
    bomb of zeros about a thousand times), at least ``min_ratio_check_bytes`` (tiny archives of
    blank images), never more than ``max_unzipped_bytes``.
    """
    by_ratio = int(limits.max_compression_ratio * max(archive_bytes, 0))
    return int(min(limits.max_unzipped_bytes, max(limits.min_ratio_check_bytes, by_ratio)))


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n < 10 * 1024**2 else f"{n / 1024**2:.0f} MiB"


def extract_zip(
    path: PathLike, dest: PathLike, limits: UploadLimits = UploadLimits(), name: str | None = None
) -> list[Path]:
    """Extract the files of a zip into ``dest`` safely; returns the extracted files.

    Refuses path traversal, links, encrypted entries, too many entries and decompression bombs.
    The bomb check looks at the archive as a whole: the sum of the declared sizes must stay within
    :func:`expansion_budget` (``max_unzipped_bytes``, and ``max_compression_ratio`` times the
    archive's own size) before anything is written, and the bytes actually inflated (headers can
    lie) are counted against the same budget while extracting, so no more than the budget is ever
    written. One member expanding more than ``max_compression_ratio`` is refused as well.
    """
    name = name or Path(path).name
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(name, f"not a readable zip archive ({exc})") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if not infos:
            raise UploadError(name, "the zip archive is empty: it holds no files")
        if len(infos) > limits.max_zip_members:
            raise UploadError(
                name, f"the zip holds {len(infos)} files, more than the limit of {limits.max_zip_members}"
            )
        targets = [_member_target(dest, info, name) for info in infos]  # check every name before writing any
        archive_bytes = os.path.getsize(path)
        budget = expansion_budget(archive_bytes, limits)
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_unzipped_bytes:
            raise UploadError(
                name,
                f"the zip would expand to {declared / 1024**2:.0f} MiB, over the limit of "
                f"{limits.max_unzipped_bytes / 1024**2:.0f} MiB (decompression bomb?)",
            )
        if declared > budget:
            raise UploadError(
                name,
                f"the zip's {len(infos)} files would expand {_mib(archive_bytes)} into "
                f"{_mib(declared)} ({declared / max(archive_bytes, 1):.0f}x; the limit is "
                f"{limits.max_compression_ratio:.0f}x): refused as a decompression bomb, "
                "nothing was extracted",
            )
        written = 0
        out: list[Path] = []
        for info, target in zip(infos, targets):
            if info.flag_bits & 0x1:
                raise UploadError(name, f"zip entry {info.filename!r} is encrypted; upload an unencrypted zip")
            target.parent.mkdir(parents=True, exist_ok=True)
            member_bytes = 0
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if written > budget:  # more than the headers declared: count what really inflates
                            raise UploadError(
                                name,
                                f"the zip expands beyond {_mib(budget)} while extracting (the limit "
                                f"for a {_mib(archive_bytes)} archive: at most "
                                f"{limits.max_compression_ratio:.0f}x and "
                                f"{_mib(limits.max_unzipped_bytes)}): refused as a decompression bomb",
                            )
                        ratio = member_bytes / max(info.compress_size, 1)
                        if member_bytes > limits.min_ratio_check_bytes and ratio > limits.max_compression_ratio:
                            raise UploadError(
                                name,
                                f"zip entry {info.filename!r} expands more than "
                                f"{limits.max_compression_ratio:.0f}x (decompression bomb); refused",
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise UploadError(name, f"zip entry {info.filename!r} cannot be extracted ({exc})") from exc
            out.append(target)
        return out


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in _ZIP_MAGIC


def _check_pixels(path: Path, kind: str, name: str, limits: UploadLimits) -> None:
    """Refuse images whose header announces more pixels than the limits, before decoding them."""
    shape: tuple[int, ...] = ()
    try:
        if kind == "dicom":
            import pydicom

            from medclip.io.dicom import dicom_source

            # a .dcm.gz is inflated (within the io layer's cap) so its header is checked too
            ds = pydicom.dcmread(dicom_source(path), stop_before_pixels=True, force=True)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            shape = (frames, int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0))
        elif kind == "nifti":
            import nibabel as nib

            shape = tuple(int(n) for n in nib.load(str(path)).shape)  # type: ignore[attr-defined]
        elif kind == "raster":
            from PIL import Image

            with Image.open(path) as img:
                shape = (img.height, img.width)
    except Exception:  # noqa: BLE001 - the reader reports unreadable files with its own clear message
        return
    count = int(np.prod(shape, dtype=np.int64)) if shape else 0
    plane = int(np.prod(shape[-2:], dtype=np.int64)) if len(shape) >= 2 else 0
    if plane > limits.max_pixels:
        raise UploadError(
            name,
            f"image of {shape[-2]} x {shape[-1]} pixels exceeds the limit of {limits.max_pixels / 1e6:.0f} megapixels",
        )
    if count > limits.max_voxels:
        raise UploadError(
            name, f"volume {shape} has {count / 1e6:.0f} M voxels, over the limit of {limits.max_voxels / 1e6:.0f} M"
        )


def _read_image(path: Path, kind: str, name: str) -> MedicalImage:
    """Modality values for DICOM/NIfTI (the demo windows them), display values for PNG/JPEG."""
    window = "auto" if kind == "raster" else None
    try:
        try:
            return load_image(path, window=window)
        except MultiVolumeError as exc:
            # 4D (fMRI, perfusion, multi-phase): show the first volume; the header says how many there are
            return _first_volume(load_image(path, window=window, frame=0), exc)
    except ImageReadError as exc:
        raise UploadError(name, _reason_for(exc, kind)) from exc
    except MemoryError as exc:
        raise UploadError(name, "not enough memory to decode this image") from exc


def _first_volume(image: MedicalImage, exc: MultiVolumeError) -> MedicalImage:
    """The first volume of 4D input, its header saying how many volumes the upload holds."""
    image.metadata["volumes"] = exc.n_volumes
    return image


def _reason_for(exc: ImageReadError, kind: str) -> str:
    what = {
        "dicom": "broken or unsupported DICOM file",
        "dicom_series": "DICOM series cannot be assembled",
        "nifti": "broken NIfTI file",
        "raster": "broken image file",
    }.get(kind, "unreadable file")
    return f"{what}: {exc.reason}"


def _read_zip(path: Path, name: str, workdir: Path, limits: UploadLimits) -> tuple[MedicalImage, str]:
    files = extract_zip(path, workdir / "zip", limits, name=name)
    dicoms = [f for f in files if is_dicom_file(f)]
    if not dicoms:
        images = [f for f in files if _detect(f) in ("nifti", "raster")]
        if len(images) == 1:
            kind = str(_detect(images[0]))  # "nifti" or "raster", as just filtered
            _check_pixels(images[0], kind, name, limits)
            return _read_image(images[0], kind, name), kind
        raise UploadError(
            name,
            f"the zip holds {len(files)} file(s) but no DICOM series "
            f"({len(images)} other images; upload those one at a time)",
        )
    _check_series_pixels(dicoms, name, limits)
    series = find_dicom_series(dicoms)
    if not series:
        raise UploadError(name, "the zip holds DICOM files but none with pixel data")
    # The series with the most files is the one to show (scouts and localizers are short).
    members = max(series.values(), key=len)
    if len(members) == 1:
        _check_pixels(members[0], "dicom", name, limits)
        return _read_image(members[0], "dicom", name), "dicom"
    try:
        try:
            return read_dicom_series(members, window=None), "dicom_series"
        except MultiVolumeError as exc:
            # fMRI / perfusion / multi-phase / mosaics: show the first volume (the header says how many there are)
            return _first_volume(read_dicom_series(members, window=None, volume_index=0), exc), "dicom_series"
    except ImageReadError as exc:
        raise UploadError(name, _reason_for(exc, "dicom_series")) from exc
    except MemoryError as exc:
        raise UploadError(name, "not enough memory to assemble this series") from exc


def _check_series_pixels(files: list[Path], name: str, limits: UploadLimits) -> None:
    import pydicom

    total = 0
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception:  # noqa: BLE001 - unreadable headers are reported by the series reader
            continue
        if rows * cols > limits.max_pixels:
            raise UploadError(
                name,
                f"{file.name}: image of {rows} x {cols} pixels exceeds the limit of "
                f"{limits.max_pixels / 1e6:.0f} megapixels",
            )
        total += rows * cols * frames
        if total > limits.max_voxels:
            raise UploadError(
                name, f"the series holds more than {limits.max_voxels / 1e6:.0f} M voxels, over the limit"
            )


def _detect(path: Path) -> str | None:
    try:
        return detect_format(path)
    except ImageReadError:
        return None


@phi_safe  # reader warnings name the uploaded file (often a patient name): sanitised, never logged raw
def read_upload(
    path: PathLike,
    *,
    limits: UploadLimits = UploadLimits(),
    name: str | None = None,
    workdir: PathLike | None = None,
) -> LoadedStudy:
    """Decode one upload (DICOM, zipped DICOM series, NIfTI, PNG or JPEG) into a :class:`LoadedStudy`.

    ``name`` is what messages call the file (default: its base name). A zip is extracted into a
    private temporary folder under ``workdir`` (default: the system temp folder) that is removed
    before this returns. Raises :class:`UploadError` for anything that cannot be used.
    """
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UploadError(name, f"cannot open the upload ({exc.strerror or exc})") from exc
    if size == 0:
        raise UploadError(name, "the file is empty")
    if size > limits.max_upload_bytes:
        raise UploadError(
            name,
            f"the file is {size / 1024**2:.0f} MiB, over the upload limit of "
            f"{limits.max_upload_bytes / 1024**2:.0f} MiB",
        )
    if _is_zip(path):
        with upload_workspace(workdir) as tmp:
            image, kind = _read_zip(path, name, tmp, limits)
    else:
        try:
            kind = detect_format(path)
        except ImageReadError as exc:
            raise UploadError(
                name, f"not an image this demo reads (DICOM, a zipped DICOM series, NIfTI, PNG or JPEG): {exc.reason}"
            ) from exc
        _check_pixels(path, kind, name, limits)
        image = _read_image(path, kind, name)
    image.source = name  # never keep the temporary path (or a folder name) around
    return LoadedStudy(image=image, kind=kind, name=name, header=safe_header(image))


def bundled_examples(export_dir: PathLike | None = None, limit: int = 6) -> dict[str, Path]:
    """A few images of the bundled sample export, labelled by study folder: {label: path}."""
    from medclip.sample import SAMPLE_EXPORT

    root = Path(export_dir) if export_dir is not None else SAMPLE_EXPORT
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for study in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in study.rglob("*") if f.is_file() and _detect(f) in ("dicom", "nifti", "raster"))
        if files:
            out[f"sample {study.name} ({_detect(files[0])})"] = files[0]
        if len(out) == limit:
            break
    return out
