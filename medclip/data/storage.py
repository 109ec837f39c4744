"""Where manifests and caches live: a local path, or any fsspec URL (``s3://``, ``gs://``, ``az://``, ...).

Training nodes can then stream cache shards straight from a bucket. Local paths stay ``Path`` objects
and keep their all-or-nothing writes (:func:`medclip.fsutil.atomic_write`); on object stores a file
is uploaded in one request once complete, which is all or nothing too. Credentials and endpoints come
from the store's usual configuration (``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for S3-compatible
servers, ``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's config); the protocol's package (``s3fs``,
``gcsfs``, ...) must be installed.

Object-store faults (one policy, here): every operation on a URL goes through :func:`retry_call` (or
:func:`retry_stream` for a stream read from start to end, e.g. a cache shard). A transient failure (HTTP
500/502/503/504/408/429, ``SlowDown`` / ``ServiceUnavailable`` / ``InternalError`` / ``RequestTimeout``, a
dropped or refused connection, a timeout) is retried with exponential backoff: ``MEDCLIP_STORAGE_ATTEMPTS``
attempts in all (default 5), waiting ``MEDCLIP_STORAGE_RETRY_DELAY`` seconds (default 1) times 1, 2, 4, ...
(at most 30 s each, each wait jittered down to half of it), so about 15 s at most by default. This comes on
top of the client library's own retries (botocore, s3fs). When the attempts run out the operation stops with
one :class:`StorageError` naming the URL, the operation, the last reason and the number of attempts. Refusals
(HTTP 401/403, ``AccessDenied``, missing or bad credentials) and a missing bucket are never retried: a
:class:`StorageError` at once. A missing object stays ``FileNotFoundError`` (callers decide what that means).
Local paths are never retried (their faults: :mod:`medclip.fsutil`).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

Location = str | Path  # a local path or a URL
T = TypeVar("T")

log = logging.getLogger(__name__)

#: Environment variables of the retry policy (:meth:`RetryPolicy.from_env`).
ATTEMPTS_ENV = "MEDCLIP_STORAGE_ATTEMPTS"
DELAY_ENV = "MEDCLIP_STORAGE_RETRY_DELAY"
#: HTTP statuses and S3-style error codes of a store that may answer if asked again.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"}
)
#: Refusals: asking again does not help.
REFUSED_STATUS = frozenset({401, 403})
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in (
        "EBUSY",
        "EREMOTEIO",
        "EIO",
        "EAGAIN",
        "ETIMEDOUT",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "ENETUNREACH",
        "ENETDOWN",
        "EHOSTUNREACH",
        "EPIPE",
    )
    if hasattr(errno, n)
)
#: Client-library errors of a dropped connection, a timeout or a garbled answer (matched by name: no import).
_TRANSIENT_CLASSES = frozenset(
    {
        "botocore.HTTPClientError",  # ConnectionClosedError, ReadTimeoutError, ProxyConnectionError, ...
        "botocore.ConnectionError",  # EndpointConnectionError, ConnectTimeoutError
        "botocore.ResponseParserError",
        "botocore.IncompleteReadError",
        "aiohttp.ClientConnectionError",  # ServerDisconnectedError, ClientOSError, ...
        "aiohttp.ClientPayloadError",
        "http.IncompleteRead",
        "fsspec.FSTimeoutError",
        "urllib3.ProtocolError",
        "requests.ConnectionError",
    }
)


class StorageError(ValueError):
    """An object-store operation that failed for good: the message names the URL, the operation, the reason and
    (for a transient fault that did not pass) the number of attempts. ``attempts`` and ``transient`` say the same
    for code."""

    def __init__(self, message: str, *, location: object = None, attempts: int = 1, transient: bool = False) -> None:
        super().__init__(message)
        self.location = location
        self.attempts = attempts
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:  # survives a DataLoader worker's pickling
        return (_rebuild_storage_error, (str(self), self.location, self.attempts, self.transient))


def _rebuild_storage_error(message: str, location: object, attempts: int, transient: bool) -> StorageError:
    return StorageError(message, location=location, attempts=attempts, transient=transient)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient object-store fault is retried (see the module docstring)."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failed attempt: ``base_delay * 2**(failures-1)``, capped at
        ``max_delay``, jittered down to between half of it and all of it (readers on many nodes spread out)."""
        full = min(self.max_delay, self.base_delay * 2.0 ** max(failures - 1, 0))
        return full * (0.5 + 0.5 * random.random())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RetryPolicy:
        """The policy of ``MEDCLIP_STORAGE_ATTEMPTS`` (>= 1) and ``MEDCLIP_STORAGE_RETRY_DELAY`` (seconds, >= 0)."""
        env = dict(os.environ) if env is None else env
        attempts, delay = cls.attempts, cls.base_delay
        try:
            if env.get(ATTEMPTS_ENV, "").strip():
                attempts = int(env[ATTEMPTS_ENV])
            if env.get(DELAY_ENV, "").strip():
                delay = float(env[DELAY_ENV])
        except ValueError:
            attempts = delay = -1
        if attempts < 1 or not delay >= 0:
            raise ValueError(
                f"{ATTEMPTS_ENV}={env.get(ATTEMPTS_ENV, '')!r} / {DELAY_ENV}={env.get(DELAY_ENV, '')!r}: "
                "the number of attempts must be a whole number >= 1 and the delay a number of seconds >= 0"
            )
        return cls(attempts=attempts, base_delay=delay)


def _sleep(seconds: float) -> None:  # one seam for tests
    time.sleep(seconds)


_active = threading.local()  # how many retried operations this thread is inside


@contextmanager
def _one_policy() -> Iterator[None]:
    """Inside a retried operation the storage calls it makes are tried once: the outer operation owns the policy
    (its attempts are the attempts, its name is in the message)."""
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1


def _nested() -> bool:
    return getattr(_active, "depth", 0) > 0


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_answer(exc: BaseException) -> tuple[int | None, str | None]:
    """(HTTP status, error code) of the store's answer behind ``exc`` (a botocore ``ClientError`` in its chain)."""
    for e in _error_chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and ("Error" in response or "ResponseMetadata" in response):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (response.get("Error") or {}).get("Code")
            return (int(status) if status else None), (str(code) if code else None)
        status = getattr(e, "code", None) if type(e).__module__.startswith(("gcsfs", "google")) else None
        if isinstance(status, int):
            return status, None
    return None, None


def _class_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__.split('.')[0]}.{c.__name__}" for c in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    """Whether an object store's error may pass if the operation is asked again (see the module docstring)."""
    if isinstance(exc, StorageError):
        return False
    status, code = _http_answer(exc)
    if status is not None or code is not None:
        return status in TRANSIENT_STATUS or code in TRANSIENT_CODES
    if isinstance(exc, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return any(name in _TRANSIENT_CLASSES for e in _error_chain(exc) for name in _class_names(e))


def _refusal(exc: BaseException) -> str | None:
    """Why the store refused for good (credentials, permissions, no bucket), or None."""
    status, code = _http_answer(exc)
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    if status in REFUSED_STATUS or isinstance(exc, PermissionError):
        return "access denied: check the credentials and the bucket's permissions"
    names = {name for e in _error_chain(exc) for name in _class_names(e)}
    if any(n.startswith(("botocore.", "google.")) and ("Credential" in n or "Token" in n) for n in names):
        return "no usable credentials: set them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, ...)"
    return None


def describe(exc: BaseException) -> str:
    """A short reason: the store's answer (``HTTP 503 ServiceUnavailable``) or the error's class and first line."""
    status, code = _http_answer(exc)
    if status is not None or code is not None:
        return " ".join(x for x in (f"HTTP {status}" if status else "", code if code != str(status) else "") if x)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _final_error(
    what: str, location: Location, exc: BaseException, attempts: int, waited: float
) -> StorageError | None:
    """The :class:`StorageError` that ends the operation, or None (``exc`` is raised as it is)."""
    refusal = _refusal(exc)
    if refusal is not None:
        return StorageError(
            f"{location}: {what} failed: {refusal} ({describe(exc)}); not retried",
            location=location,
            attempts=attempts,
        )
    if is_transient(exc):
        return StorageError(
            f"{location}: {what} failed after {attempts} attempt{'s' if attempts != 1 else ''} ({describe(exc)}); "
            f"the object store kept failing through {waited:.1f} s of retries ({ATTEMPTS_ENV} sets the attempts, "
            f"{DELAY_ENV} the first wait in seconds)",
            location=location,
            attempts=attempts,
            transient=True,
        )
    return None


def _retry_or_raise(
    what: str, location: Location, exc: Exception, failures: int, waited: float, policy: RetryPolicy
) -> float:
    """After the ``failures``-th failure: wait and return the wait, or raise the error that ends the operation."""
    if failures < policy.attempts and is_transient(exc) and _refusal(exc) is None:
        wait = policy.delay(failures)
        log.warning(
            "%s: %s failed (%s), attempt %d of %d; retrying in %.1f s",
            location,
            what,
            describe(exc),
            failures,
            policy.attempts,
            wait,
        )
        _sleep(wait)
        return wait
    final = _final_error(what, location, exc, failures, waited)
    if final is None:
        raise exc
    raise final from exc


def retry_call(what: str, location: Location, fn: Callable[[], T], *, policy: RetryPolicy | None = None) -> T:
    """``fn()``, retried on transient object-store faults (a URL ``location``; a local path runs ``fn`` once).

    ``what`` names the operation in messages (``"upload"``, ``"read"``); the error that ends it is a
    :class:`StorageError` (transient faults that did not pass, refusals) or ``fn``'s own (anything else)."""
    if not is_url(location) or _nested():
        return fn()
    policy = policy or RetryPolicy.from_env()
    failures, waited = 0, 0.0
    while True:
        try:
            with _one_policy():
                return fn()
        except Exception as exc:  # noqa: BLE001  (classified: retried, turned into StorageError, or raised)
            failures += 1
            waited += _retry_or_raise(what, location, exc, failures, waited, policy)


def retry_stream(
    what: str, location: Location, open_stream: Callable[[], Iterator[T]], *, policy: RetryPolicy | None = None
) -> Iterator[T]:
    """The items of ``open_stream()``; after a transient fault the stream is opened again and the items already
    yielded are skipped, so the caller sees each item once, in order (the stream must be deterministic)."""
    if not is_url(location):
        yield from open_stream()
        return
    policy = policy or RetryPolicy.from_env()
    failures, waited, done = 0, 0.0, 0
    while True:
        position = 0
        stream: Iterator[T] | None = None
        try:
            while True:
                try:
                    with _one_policy():  # only while the stream runs, not while the caller holds an item
                        if stream is None:
                            stream = iter(open_stream())
                        item = next(stream)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001  (classified: retried, turned into StorageError, or raised)
                    failures += 1
                    waited += _retry_or_raise(what, location, exc, failures, waited, policy)
                    break  # open it again
                position += 1
                if position > done:
                    done = position
                    yield item
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


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
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # the protocol's package is missing, or an unknown protocol
        raise ValueError(f"{url}: cannot open this storage ({exc})") from None
    return fs, str(path)


def exists(location: Location) -> bool:
    """Whether the file or folder exists."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = _fs(str(location))
    return bool(retry_call("existence check", location, lambda: fs.exists(path)))


@contextmanager
def open_file(location: Location, mode: str = "rb") -> Iterator[IO[bytes]]:
    """Open for reading (``rb``, seekable on object stores) or writing (``wb``: uploaded when closed).

    On an object store the opening is retried (:func:`retry_call`), what the caller then reads or writes is not:
    callers that read a whole file use :func:`read_bytes`, :func:`retry_stream` or :func:`retry_call` around it."""
    if not is_url(location):
        with open(location, mode) as handle:
            yield handle
        return
    fs, path = _fs(str(location))
    with retry_call("open" if "r" in mode else "open for writing", location, lambda: fs.open(path, mode)) as handle:
        yield handle


def read_bytes(location: Location) -> bytes:
    """The whole file."""
    if not is_url(location):
        return Path(location).read_bytes()
    fs, path = _fs(str(location))
    return bytes(retry_call("read", location, lambda: fs.cat_file(path)))


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
    fs, path = _fs(str(location))
    retry_call("upload", location, lambda: fs.pipe_file(path, data))


def upload(local: Path, location: Location) -> None:
    """Put a finished local file at ``location`` (a rename when both are local)."""
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, location)
        return
    fs, path = _fs(str(location))
    retry_call("upload", location, lambda: fs.put_file(str(local), path))


def unlink(location: Location) -> None:
    """Remove a file; a missing one is fine."""
    if not is_url(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _fs(str(location))

    def remove() -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    retry_call("removal", location, remove)


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
    found = retry_call("listing", base, lambda: fs.glob(f"{path.rstrip('/')}/{pattern}"))
    return sorted(f"{protocol}://{p}" for p in found)


def makedirs(location: Location) -> None:
    """Create a local folder (object stores have none to create)."""
    if not is_url(location):
        Path(location).mkdir(parents=True, exist_ok=True)


def copy_to_local(location: Location, local: Path) -> Path:
    """A local copy of a file (the file itself when it is local)."""
    if not is_url(location):
        return Path(location)

    def download() -> Path:
        with open_file(location) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return local

    return retry_call("download", location, download)


def content_fingerprint(location: Location, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes (a manifest's data fingerprint)."""
    import hashlib

    def digest() -> str:
        sha = hashlib.sha256()
        with open_file(location) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
        return sha.hexdigest()[:length]

    return retry_call("read", location, digest)
