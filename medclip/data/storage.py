"""Where manifests and caches live: a local path, or any fsspec URL (``s3://``, ``gs://``, ``az://``, ...).

Training nodes can then stream cache shards straight from a bucket. Local paths stay ``Path`` objects
and keep their all-or-nothing writes (:func:`medclip.fsutil.atomic_write`); on object stores a file
is uploaded in one request once complete, which is all or nothing too. Credentials and endpoints come
from the store's usual configuration (``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for S3-compatible
servers, ``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's config); the protocol's package (``s3fs``,
``gcsfs``, ...) must be installed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

Location = str | Path  # a local path or a URL


def is_url(location: Location | Any) -> bool:
    """True for ``proto://...`` (except ``file://``, which is a local path)."""
    text = str(location)
    return "://" in text and not text.startswith("file://") and isinstance(location, str)


def as_location(location: Location | os.PathLike[str]) -> Location:
    """A URL stays a string (``Path`` would fold ``s3://`` into ``s3:/``); anything else becomes a ``Path``."""
    if isinstance(location, str) and location.startswith("file://"):
        return Path(location[len("file://") :])
    return str(location) if is_url(location) else Path(location)


def join(base: Location, *names: str) -> Location:
    """``base / name / ...`` for a path or a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(n.strip("/") for n in names)])
    return Path(base).joinpath(*names)


def parent(location: Location) -> Location:
    """The folder holding ``location``."""
    return str(location).rstrip("/").rsplit("/", 1)[0] if is_url(location) else Path(location).parent


def name(location: Location) -> str:
    """The last component of a path or URL."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # the protocol's package is missing, or an unknown protocol
        raise ValueError(f"{url}: cannot open this storage ({exc})") from None


def exists(location: Location) -> bool:
    """Whether the file or folder exists."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = _fs(str(location))
    return bool(fs.exists(path))


@contextmanager
def open_file(location: Location, mode: str = "rb") -> Iterator[IO[bytes]]:
    """Open for reading (``rb``, seekable on object stores) or writing (``wb``: uploaded when closed)."""
    if not is_url(location):
        with open(location, mode) as handle:
            yield handle
        return
    fs, path = _fs(str(location))
    with fs.open(path, mode) as handle:
        yield handle


def read_bytes(location: Location) -> bytes:
    """The whole file."""
    with open_file(location) as handle:
        return handle.read()


def read_text(location: Location) -> str:
    """The whole file as UTF-8 text."""
    return read_bytes(location).decode("utf-8")


def write_bytes(location: Location, data: bytes) -> None:
    """Write a file all or nothing (local: temporary file + rename; object store: one upload)."""
    if not is_url(location):
        from medclip.fsutil import atomic_write

        with atomic_write(location) as tmp:
            tmp.write_bytes(data)
        return
    with open_file(location, "wb") as handle:
        handle.write(data)


def upload(local: Path, location: Location) -> None:
    """Put a finished local file at ``location`` (a rename when both are local)."""
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, location)
        return
    fs, path = _fs(str(location))
    fs.put_file(str(local), path)


def unlink(location: Location) -> None:
    """Remove a file; a missing one is fine."""
    if not is_url(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _fs(str(location))
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def glob(base: Location, pattern: str) -> list[Location]:
    """Files in ``base`` matching ``pattern`` (one level), sorted."""
    if not is_url(base):
        return sorted(Path(base).glob(pattern))
    fs, path = _fs(str(base))
    protocol = str(base).split("://", 1)[0]
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001  (not every filesystem caches listings)
        pass
    return sorted(f"{protocol}://{p}" for p in fs.glob(f"{path.rstrip('/')}/{pattern}"))


def makedirs(location: Location) -> None:
    """Create a local folder (object stores have none to create)."""
    if not is_url(location):
        Path(location).mkdir(parents=True, exist_ok=True)


def copy_to_local(location: Location, local: Path) -> Path:
    """A local copy of a file (the file itself when it is local)."""
    if not is_url(location):
        return Path(location)
    with open_file(location) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return local


def content_fingerprint(location: Location, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes (a manifest's data fingerprint)."""
    import hashlib

    digest = hashlib.sha256()
    with open_file(location) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
