"""An object store that fails while medclip writes a cache to it or training reads shards from it.

The faults are real HTTP answers: a WSGI middleware in front of moto's S3 server (on 127.0.0.1, started here) answers
chosen requests with 500 InternalError / 503 ServiceUnavailable / 403 AccessDenied, or drops their connection, for
a number of requests or for ever (an outage). The client libraries' own retries are turned off here (botocore's
``AWS_MAX_ATTEMPTS=1``, s3fs ``retries=1``), so every injected fault reaches medclip's one retry policy
(``medclip.data.storage.retry_call`` / ``retry_stream``); its waits are recorded instead of slept.

Skipped cleanly when moto's server or s3fs is not installed (test extras: ``moto[server]``, ``s3fs``).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclip.data import storage
from medclip.data.cache import PARTIAL_INDEX, CacheConfig, CacheError, build_cache, read_cache_index
from medclip.data.dataset import CacheDataset, CacheMapDataset
from medclip.data.storage import RetryPolicy, StorageError, is_transient

CONFIG = CacheConfig(image_size=64, shard_size=4)  # a train shard is ~23 kB: several reads
SHARDS = ["test/shard-000000.tar", "train/shard-000000.tar", "train/shard-000001.tar", "val/shard-000000.tar"]

_ANSWERS = {
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": ("503 Service Unavailable", "ServiceUnavailable", "The service is unable to handle the request."),
    "403": ("403 Forbidden", "AccessDenied", "Access Denied"),
}


@dataclass
class _Rule:
    kind: str  # "500" | "503" | "403" | "drop"
    path: str  # a substring of the request path
    method: str | None
    after: int  # matching requests let through first
    times: int | None  # faults to inject (None: for ever)


class Faults:
    """WSGI middleware in front of moto: answers the requests a rule matches with an error, or drops them."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.rules: list[_Rule] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, fault injected)

    def add(self, kind: str, path: str, *, method: str | None = None, after: int = 0, times: int | None = None) -> None:
        with self.lock:
            self.rules.append(_Rule(kind, path, method, after, times))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.requests.clear()

    def count(self, path: str, method: str | None = None, fault: bool | None = None) -> int:
        """Requests seen for ``path`` (with ``fault``: only those answered with / without a fault)."""
        with self.lock:
            return sum(
                1
                for m, p, f in self.requests
                if path in p and method in (None, m) and (fault is None or (f is not None) == fault)
            )

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            for rule in self.rules:
                if rule.path in path and rule.method in (None, method):
                    if rule.after > 0:
                        rule.after -= 1
                        return None
                    if rule.times is None or rule.times > 0:
                        if rule.times is not None:
                            rule.times -= 1
                        return rule.kind
            return None

    def __call__(self, environ: dict, start_response):  # noqa: ANN204
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        kind = self._take(method, path)
        with self.lock:
            self.requests.append((method, path, kind))
        if kind is None:
            return self.app(environ, start_response)  # type: ignore[operator]
        body_in = environ["wsgi.input"]
        body_in.read() if environ.get("wsgi.input_terminated") else body_in.read(
            int(environ.get("CONTENT_LENGTH") or 0)
        )
        if kind == "drop":  # the connection goes away before any answer
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError("fault injected: connection dropped")
        status, code, message = _ANSWERS[kind]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>fault</RequestId></Error>"
        ).encode()
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]


@pytest.fixture(scope="module")
def s3():
    """(bucket URL, Faults) of an S3 server on 127.0.0.1 with a fault middleware in front of moto."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    s3fs = pytest.importorskip("s3fs", reason="s3fs not installed")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    faults = Faults(DomainDispatcherApplication(create_backend_app))

    class FaultyMotoServer(server_mod.ThreadedMotoServer):
        def _server_entry(self) -> None:
            self._server = make_server(self._ip_address, self._port, faults, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    try:
        server = FaultyMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # noqa: BLE001  (no free port, blocked socket, missing server extras)
        pytest.skip(f"cannot start an S3 server on 127.0.0.1 ({exc})")
    mp = pytest.MonkeyPatch()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_MAX_ATTEMPTS": "1",  # botocore's own retries off: each fault reaches medclip's policy
    }.items():
        mp.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_RETRY_MODE", storage.ATTEMPTS_ENV, storage.DELAY_ENV):
        mp.delenv(k, raising=False)
    mp.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retry loop off too
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("faults")
    server_log = logging.getLogger("werkzeug")
    level, server_log.level = server_log.level, logging.ERROR  # no request lines from the server's threads
    yield "s3://faults", faults
    server_log.setLevel(level)
    s3fs.S3FileSystem.clear_instance_cache()
    mp.undo()
    server.stop()


@pytest.fixture()
def waits(s3, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits medclip asked for (recorded, not slept); faults cleared before and after each test."""
    s3[1].clear()
    recorded: list[float] = []
    monkeypatch.setattr(storage, "_sleep", recorded.append)
    yield recorded
    s3[1].clear()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """12 PNGs of 32 px (8 train, 2 val, 2 test): shards of 4 give test/0, train/0, train/1, val/0."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    rows = []
    for k in range(12):
        path = root / f"img{k:02d}.png"
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(path)
        rows.append(
            {
                "image_id": f"img{k:02d}",
                "path": str(path),
                "kind": "image",
                "patient_id": f"pat{k:02d}",
                "study_id": f"st{k:02d}",
                "series_id": f"st{k:02d}",
                "report_text": "Pleural effusion." if k % 2 else "The lungs are clear.",
                "split": "train" if k < 8 else ("val" if k % 2 else "test"),
                "label.pleural_effusion": float(k % 2),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def clean(s3, manifest: pd.DataFrame) -> str:
    """A cache built in the bucket without faults."""
    url = f"{s3[0]}/clean/cache"
    assert build_cache(manifest, url, config=CONFIG, workers=1, progress=False).written == 12
    assert sorted(read_cache_index(url)["shards"]) == SHARDS
    return url


def _build(manifest: pd.DataFrame, url: str):
    return build_cache(manifest, url, config=CONFIG, workers=1, progress=False)


def _assert_same_cache(url: str, clean: str) -> None:
    """Same cache.json and byte-identical shards as the run without faults; no partial index left."""
    assert storage.read_bytes(f"{url}/cache.json") == storage.read_bytes(f"{clean}/cache.json")
    for name in SHARDS:
        assert storage.read_bytes(f"{url}/{name}") == storage.read_bytes(f"{clean}/{name}"), name
    assert not storage.exists(f"{url}/{PARTIAL_INDEX}")


def _items(dataset) -> list[tuple[str, torch.Tensor]]:
    items = list(dataset) if isinstance(dataset, CacheDataset) else [dataset[i] for i in range(len(dataset))]
    return [(x["image_id"], x["image"]) for x in items]


def _same_items(a: list, b: list) -> None:
    assert [k for k, _ in a] == [k for k, _ in b] and len(a) > 0
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


# -- cache upload


def test_cache_upload_retries_503_then_succeeds(s3, waits, manifest, clean) -> None:
    url, faults = f"{s3[0]}/retry503/cache", s3[1]
    faults.add("503", "retry503/cache/train/shard-000001.tar", method="PUT", times=2)
    result = _build(manifest, url)
    assert result.written == 12
    # two 503 answers, then the upload that passed: medclip retried, after two growing waits
    assert faults.count("train/shard-000001.tar", "PUT", fault=True) == 2
    assert faults.count("train/shard-000001.tar", "PUT", fault=False) == 1
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 <= waits[1] <= 2.0
    _assert_same_cache(url, clean)


def test_cache_upload_retries_500_and_a_dropped_connection(s3, waits, manifest, clean) -> None:
    url, faults = f"{s3[0]}/retry500/cache", s3[1]
    faults.add("500", "retry500/cache/test/shard-000000.tar", method="PUT", times=1)
    # aiohttp itself sends an idempotent request again once when a pooled connection drops: two drops in a row
    # get past it to medclip's retry (one or two waits, by the client library's version)
    faults.add("drop", "retry500/cache/val/shard-000000.tar", method="PUT", times=2)
    faults.add("503", "retry500/cache/cache.json", method="PUT", times=1)
    assert _build(manifest, url).written == 12
    assert faults.count("retry500/cache", fault=True) == 4 and 3 <= len(waits) <= 4
    _assert_same_cache(url, clean)


def test_cache_upload_outage_leaves_no_cache_json(s3, waits, manifest) -> None:
    url, faults = f"{s3[0]}/outage/cache", s3[1]
    shard = f"{url}/train/shard-000001.tar"
    faults.add("503", "outage/cache/train/shard-000001.tar", method="PUT")  # for ever
    with pytest.raises(StorageError) as info:
        _build(manifest, url)
    message = str(info.value)
    assert message.startswith(f"{shard}: upload failed after 5 attempts (HTTP 503 ServiceUnavailable)")
    assert "run the same command again to resume" in message and "\n" not in message
    assert info.value.attempts == 5 and info.value.transient
    assert len(waits) == 4 and faults.count("train/shard-000001.tar", "PUT") == 5  # bounded: 5 attempts
    # nothing a reader could take for a finished cache; the shards before the outage are kept
    assert not storage.exists(f"{url}/cache.json") and not storage.exists(shard)
    with pytest.raises(CacheError, match="no cache.json"):
        read_cache_index(url)
    partial = storage.read_text(f"{url}/{PARTIAL_INDEX}")
    assert "test/shard-000000.tar" in partial and "train/shard-000000.tar" in partial and "val/" not in partial


def test_cli_cache_outage_is_one_line_error(s3, waits, manifest, tmp_path, capsys, monkeypatch) -> None:
    from medclip.cli import main
    from medclip.data.manifest import write_manifest

    local = Path(write_manifest(manifest, tmp_path / "manifest.parquet", root=tmp_path))
    url, faults = f"{s3[0]}/cli/cache", s3[1]
    faults.add("drop", "cli/cache/train/shard-000000.tar", method="PUT")  # the store is gone for that upload
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "3")
    args = ["cache", str(local), "-o", url, "--image-size", "16", "--shard-size", "4", "--workers", "1", "-q"]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(args) == 2
    finally:  # the command's console handler writes to this test's captured stderr: not after the test
        root.handlers[:], root.level = handlers, level
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "Traceback" not in capsys.readouterr().err
    assert err[0].startswith(f"medclip cache: error: {url}/train/shard-000000.tar: upload failed after 3 attempts (")
    assert "ConnectionClosedError" in err[0] or "Connection" in err[0]
    assert len(waits) == 2 and not storage.exists(f"{url}/cache.json")


def test_cache_resume_after_outage_equals_clean_run(s3, waits, manifest, clean) -> None:
    url, faults = f"{s3[0]}/resume/cache", s3[1]
    faults.add("drop", "resume/cache/", method="PUT", after=4)  # gone after 2 shards and 2 partial indexes
    with pytest.raises(StorageError, match="upload failed after 5 attempts"):
        _build(manifest, url)
    assert not storage.exists(f"{url}/cache.json")
    faults.clear()  # the store is back: the same command finishes, reusing what was uploaded
    again = _build(manifest, url)
    assert again.reused_shards == 2 and again.written == 6
    _assert_same_cache(url, clean)


def test_forbidden_is_not_retried(s3, waits, manifest, clean) -> None:
    url, faults = f"{s3[0]}/denied/cache", s3[1]
    faults.add("403", "denied/cache/test/shard-000000.tar", method="PUT")
    with pytest.raises(StorageError) as info:
        _build(manifest, url)
    assert str(info.value).startswith(
        f"{url}/test/shard-000000.tar: upload failed: access denied: check the credentials and the bucket's "
        "permissions (HTTP 403 AccessDenied); not retried"
    )
    assert waits == [] and faults.count("test/shard-000000.tar", "PUT") == 1 and not info.value.transient
    # a training read refused: stops at once, naming the shard, nothing counted as bad samples
    shard = f"{clean}/train/shard-000000.tar"
    faults.add("403", "clean/cache/train/shard-000000.tar")
    with pytest.raises(CacheError) as read_info:
        _items(CacheDataset(clean, "train", shuffle=False, max_bad_samples=1000))
    assert str(read_info.value).startswith(f"cache shard {shard}: read failed: access denied")
    assert waits == []


def test_missing_bucket_is_not_retried(s3, waits, manifest) -> None:
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/cache/.*the bucket does not exist.*not retried"):
        _build(manifest, "s3://no-such-bucket/cache")
    assert waits == []


def test_missing_credentials_are_not_retried(s3, waits, manifest, monkeypatch) -> None:
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError, match=r"no usable credentials.*NoCredentialsError.*not retried") as info:
            _build(manifest, f"{s3[0]}/nocreds/cache")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert str(info.value).startswith(f"{s3[0]}/nocreds/cache/") and waits == []
    assert "once that is fixed, the same command resumes" in str(info.value)


# -- training reads


def test_training_read_retries_transient_error(s3, waits, clean, monkeypatch, caplog) -> None:
    import s3fs

    faults = s3[1]
    expected = {split: _items(CacheDataset(clean, split, shuffle=False)) for split in ("train", "val")}
    mapped = _items(CacheMapDataset(clean, "train"))
    assert faults.count("clean/cache", fault=True) == 0 and waits == []
    # small read blocks: a shard takes several GETs, so a fault can land after samples were already read
    monkeypatch.setattr(s3fs.S3FileSystem, "default_block_size", 1024)
    s3fs.S3FileSystem.clear_instance_cache()
    faults.add("503", "clean/cache/train/shard-000001.tar", method="GET", after=2, times=1)  # mid-shard
    faults.add("drop", "clean/cache/train/shard-000000.tar", method="GET", after=1, times=2)  # aiohttp retries once
    faults.add("500", "clean/cache/val/shard-000000.tar", times=1)  # at the opening
    with caplog.at_level(logging.WARNING):
        _same_items(_items(CacheDataset(clean, "train", shuffle=False)), expected["train"])
        _same_items(_items(CacheDataset(clean, "val", shuffle=False)), expected["val"])
    assert faults.count("clean/cache", fault=True) == 4 and 3 <= len(waits) <= 4
    assert faults.count("clean/cache/train/shard-000001.tar", "GET", fault=False) >= 3  # the fault was mid-shard
    assert not [r for r in caplog.records if r.name == "medclip.data.dataset"]  # nothing counted as bad
    faults.add("503", "clean/cache/train/shard-000000.tar", times=2)  # random access: indexing and reads
    _same_items(_items(CacheMapDataset(clean, "train")), mapped)
    assert 5 <= len(waits) <= 6
    s3fs.S3FileSystem.clear_instance_cache()


def test_training_read_outage_names_shard(s3, waits, clean, caplog) -> None:
    faults = s3[1]
    shard = f"{clean}/train/shard-000001.tar"
    faults.add("503", "clean/cache/train/shard-000001.tar")  # for ever
    with caplog.at_level(logging.WARNING), pytest.raises(CacheError) as info:
        _items(CacheDataset(clean, "train", shuffle=False, max_bad_samples=1000))
    message = str(info.value)
    assert message.startswith(f"cache shard {shard}: read failed after 5 attempts (HTTP 503")
    assert "not counted against data.max_bad_samples" in message and "resume=last" in message
    assert len(waits) == 4 and not [r for r in caplog.records if r.name == "medclip.data.dataset"]
    with pytest.raises(CacheError, match=f"cache shard {shard}: read failed after 5 attempts"):
        CacheMapDataset(clean, "train", max_bad_samples=1000)


# -- the policy itself


def test_retry_policy_from_env_and_backoff() -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy(attempts=5, base_delay=1.0)
    policy = RetryPolicy.from_env({storage.ATTEMPTS_ENV: "3", storage.DELAY_ENV: "0.5"})
    assert policy.attempts == 3 and policy.base_delay == 0.5
    for failures, full in ((1, 0.5), (2, 1.0), (3, 2.0), (20, 30.0)):  # doubling, capped at max_delay
        assert full / 2 <= policy.delay(failures) <= full
    for bad in ({storage.ATTEMPTS_ENV: "0"}, {storage.ATTEMPTS_ENV: "x"}, {storage.DELAY_ENV: "-1"}):
        with pytest.raises(ValueError, match=storage.ATTEMPTS_ENV):
            RetryPolicy.from_env(bad)


def test_what_counts_as_transient() -> None:
    import errno

    assert is_transient(OSError(errno.EBUSY, "SlowDown")) and is_transient(ConnectionResetError())
    assert is_transient(TimeoutError()) and is_transient(OSError(errno.EREMOTEIO, "InternalError"))
    assert not is_transient(PermissionError("Access Denied")) and not is_transient(FileNotFoundError("NoSuchKey"))
    assert not is_transient(ValueError("bad tar")) and not is_transient(StorageError("done"))
    # a local path is never retried
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise ConnectionResetError("local")

    with pytest.raises(ConnectionResetError):
        storage.retry_call("read", Path("/nonexistent"), fail)
    assert calls == [1]
