"""One PHI scanner for every test: finds whole planted identifiers in what output files *hold*.

A raw-byte grep of outputs both fires by chance (four bytes in 300 MB of float weights) and misses by
compression (a name inside a snappy Parquet page or a deflated zip member). This scanner decodes what
the files contain and searches the decoded text, case-insensitively, for whole planted values:

- Parquet: every column's values and the schema's key/value metadata;
- tar (WebDataset shards, gzip'd or not), zip (including torch ``.ckpt``/``.pt`` archives) and ``.gz``:
  each member, recursively; a torch archive's raw tensor storages (``*/data/<n>``) are float data, not text;
- ``.safetensors``: the JSON header (tensor names and ``__metadata__``), not the tensor bytes;
- ``.npy``: the header, not the array data;
- PNG/JPEG: text chunks and EXIF/comment fields, through Pillow;
- anything else (JSON, CSV, YAML, logs, HTML, pickles, tokenizer files): its bytes as text.

Planted values must be long enough (>= 5 characters) that a chance match in text is not a concern.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

#: DICOM keywords whose values are identifiers a de-identifier must remove (patient and staff).
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PatientAddress",
    "PatientTelephoneNumbers",
)
MIN_LENGTH = 5
_TORCH_STORAGE = re.compile(r"(^|/)data/\d+$")


def planted_values_from_dicom(paths: Iterable[str | Path]) -> set[str]:
    """Every identifier value in the PHI tags of these DICOM files (person names also by component)."""
    import pydicom

    values: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            elem = ds.data_element(keyword) if keyword in ds else None
            value = None if elem is None else elem.value
            if value is None or value == "":
                continue
            items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
            for item in items:
                text = str(item).strip()
                values.add(text)
                if elem.VR == "PN":  # a person's name: each name component on its own as well
                    values.update(part for part in re.split(r"[\^= ]+", text) if part)
    return {v for v in values if len(v) >= MIN_LENGTH}


def _text(data: bytes) -> str:
    return data.decode("latin-1").lower()


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _member_texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(location, lower-cased text) pairs for one file's content, recursing into containers."""
    lower = name.lower()
    if data[:2] == b"\x1f\x8b":
        yield from _member_texts(name.removesuffix(".gz") + "|gunzip", gzip.decompress(data))
    elif data[:4] == b"PAR1":
        yield from _parquet_texts(name, data)
    elif data[:4] == b"PK\x03\x04":
        yield from _zip_texts(name, zipfile.ZipFile(io.BytesIO(data)))
    elif _is_tar(data):
        yield from _tar_texts(name, tarfile.open(fileobj=io.BytesIO(data)))
    elif lower.endswith(".safetensors"):
        yield name, _safetensors_header(data)
    elif data[:6] == b"\x93NUMPY":
        header_len = struct.unpack("<H", data[8:10])[0] if data[6] == 1 else struct.unpack("<I", data[8:12])[0]
        yield name, _text(data[: 12 + header_len])
    elif data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        yield from _raster_texts(name, data)
    else:
        yield name, _text(data)


def _safetensors_header(data: bytes) -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return json.dumps(json.loads(data[8 : 8 + n])).lower()


def _parquet_texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = table.schema.metadata or {}
    yield f"{name}::metadata", "\n".join(_text(k) + "=" + _text(v) for k, v in meta.items())
    for column in table.column_names:
        yield f"{name}::{column}", "\n".join(str(v) for v in table.column(column).to_pylist()).lower()


def _zip_texts(name: str, archive: zipfile.ZipFile) -> Iterator[tuple[str, str]]:
    for info in archive.infolist():
        if info.is_dir() or _TORCH_STORAGE.search(info.filename):
            continue
        yield from _member_texts(f"{name}::{info.filename}", archive.read(info))


def _tar_texts(name: str, archive: tarfile.TarFile) -> Iterator[tuple[str, str]]:
    for member in archive.getmembers():
        handle = archive.extractfile(member) if member.isfile() else None
        if handle is not None:
            yield from _member_texts(f"{name}::{member.name}", handle.read())


def _raster_texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        fields = [f"{k}={v}" for k, v in img.info.items() if isinstance(v, (str, bytes))]
        fields += [str(v) for v in img.getexif().values()]
    yield name, "\n".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in fields).lower()


def file_texts(path: str | Path) -> Iterator[tuple[str, str]]:
    """(location, lower-cased text) for everything one file holds; large zip archives are read member by member."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            yield from _zip_texts(str(path), archive)
    else:
        yield from _member_texts(str(path), path.read_bytes())


def _files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in map(Path, items):
        out += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    return out


def _check_values(planted: Iterable[str]) -> list[str]:
    values = sorted({str(v).strip() for v in planted if str(v).strip()})
    short = [v for v in values if len(v) < MIN_LENGTH]
    if short:
        raise ValueError(f"planted values shorter than {MIN_LENGTH} characters match by chance: {short}")
    if not values:
        raise ValueError("no planted values given: a scan for nothing proves nothing")
    return values


def not_in_reference(planted: Iterable[str], reference: str | Path | Iterable[str | Path]) -> set[str]:
    """The planted values that do not occur in ``reference`` files, inputs that hold no patient data (a pretrained
    tokenizer's vocabulary holds common first names such as "Quinn": finding one there is no leak)."""
    values = set(_check_values(planted))
    texts = [text for path in _files(reference) for _, text in file_texts(path)]
    return {v for v in values if not any(v.lower() in text for text in texts)}


def phi_hits(paths: str | Path | Iterable[str | Path], planted: Iterable[str]) -> list[tuple[str, str]]:
    """(planted value, where) for every planted value found in the files under ``paths``."""
    values = _check_values(planted)
    files = _files(paths)
    if not files:
        raise ValueError(f"no files to scan under {paths}")
    hits = []
    for path in files:
        for where, text in file_texts(path):
            hits += [(v, where) for v in values if v.lower() in text]
    return hits


def assert_no_phi(paths: str | Path | Iterable[str | Path], planted: Iterable[str]) -> None:
    """Fail listing every planted identifier that reached any file under ``paths``."""
    hits = phi_hits(paths, planted)
    assert not hits, "planted identifiers reached the outputs:\n" + "\n".join(f"  {v!r} in {w}" for v, w in hits)


def assert_no_phi_in_text(text: str, planted: Iterable[str]) -> None:
    """Fail if any planted identifier occurs in ``text`` (a page, a log, a label)."""
    found = [v for v in _check_values(planted) if v.lower() in text.lower()]
    assert not found, f"planted identifiers reached the text: {found}"
