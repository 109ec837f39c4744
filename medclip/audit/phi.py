"""PHI scanner: finds identifiers in what output files *hold*, without ever repeating them.

Two uses, one reader of files:

- **tests** plant known values (a patient name, an ID) in the inputs and check that no output holds them
  (:func:`phi_hits`, and the ``assert_*`` helpers of ``tests/phi.py``);
- **real use** (``medclip report`` over the files it wrote): :func:`scan_files` checks the identifier values a
  user can name (:func:`identifier_values_from_manifest`: the PHI tags of the manifest's DICOM headers and its
  patient-specific folder names), salted hashes of identifiers when they are at hand, and identifier *shapes*:
  dates, phone numbers, e-mail addresses and ID-like numbers (the patterns report scrubbing removes,
  :data:`medclip.data.reports.IDENTIFIER_PATTERNS`) and DICOM instance UIDs. A hit names the file, where in it,
  and the *kind* of value ("DICOM PatientName #3", "date"), never the value.

A raw-byte grep of outputs both fires by chance (four bytes in 300 MB of float weights) and misses by
compression (a name inside a snappy Parquet page or a deflated zip member). This scanner decodes what the
files contain and searches the decoded text:

- Parquet: every column's values and the schema's key/value metadata;
- tar (WebDataset shards, gzip'd or not), zip (including torch ``.ckpt``/``.pt`` archives) and ``.gz``:
  each member, recursively; a torch archive's raw tensor storages (``*/data/<n>``) are float data, not text;
- ``.safetensors``: the JSON header (tensor names and ``__metadata__``), not the tensor bytes;
- ``.npy``: the header, not the array data;
- PNG/JPEG: text chunks and EXIF/comment fields, through Pillow;
- anything else (JSON, CSV, YAML, logs, HTML, Markdown, pickles, tokenizer files): its bytes as text (UTF-8,
  else Latin-1); HTML with its entities decoded and its ``data:`` URIs (embedded images) decoded and scanned
  as files of their own; JSON with its ``\\u00fc`` escapes decoded.

Values shorter than :data:`MIN_LENGTH` characters match by chance and are not checked.

What a clean report legitimately holds is not flagged: salted hashes (16 or 64 lower-case hex characters,
what :func:`medclip.deid.hash_identifier` and SHA-256 fingerprints write), counts and decimals (a numeric
date needs a plausible day, month and a 2- or 4-digit year: ``2.14.1`` and ``0.873`` are no dates), and
ISO 8601 date-times with a time of day (``2025-06-01T14:03:22+00:00``, the shape a program stamps its own
output with; dates from headers and reports come as ``20200122``, ``01/22/2020`` or ``January 22, 2020``
and stay flagged). Anything else the caller knows to be safe (a bare generation date, a contact address)
goes in ``allow``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import io
import json
import re
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclip.data.reports import IDENTIFIER_PATTERNS, scrub_with_hashes

#: DICOM keywords whose values are identifiers of a patient or of staff (names, IDs, birth date, places):
#: what tests plant and what :func:`identifier_values_from_manifest` reads from real headers.
IDENTIFIER_KEYWORDS = (
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
#: Instance UIDs: unique per study/series/image, linkable to the archive; the manifest keeps only their hashes.
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Values shorter than this match text by chance and are not checked.
MIN_LENGTH = 5

#: A DICOM UID of an instance (6+ numeric components); the standard's own (``1.2.840.10008.*``: SOP classes,
#: transfer syntaxes) name no patient and are left alone.
_DICOM_UID = re.compile(r"(?<![\w.])(?!1\.2\.840\.10008\.)[0-2](?:\.(?:0|[1-9]\d*)){5,}(?!\w|\.\d)")

#: (kind, pattern) of every identifier shape :func:`scan_files` looks for by default, in the order applied.
DEFAULT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (("DICOM UID", _DICOM_UID), *IDENTIFIER_PATTERNS)

#: Shapes a clean output legitimately holds, masked before the patterns run: salted hashes (16 or 64
#: lower-case hex characters) and ISO 8601 date-times with a time of day.
DEFAULT_ALLOW_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-f]{64}|[0-9a-f]{16})(?![0-9A-Za-z])"),
    re.compile(r"(?<![\w.-])\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?(?![\w.:-])"),
)

_TORCH_STORAGE = re.compile(r"(^|/)data/\d+$")
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,([A-Za-z0-9+/=\s]+)")
_NUMERIC_DATE = re.compile(r"^(\d+)([/.-])(\d+)\2(\d+)$")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


# ---------------------------------------------------------------------- values from DICOM headers
def _header_values(path: str | Path, keywords: Iterable[str]) -> dict[str, str]:
    """{value: keyword} of the given tags in one DICOM header (person names also by component)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out: dict[str, str] = {}
    for keyword in keywords:
        elem = ds.data_element(keyword) if keyword in ds else None
        value = None if elem is None else elem.value
        if value is None or value == "":
            continue
        items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for item in items:
            text = str(item).strip()
            out.setdefault(text, keyword)
            if elem is not None and elem.VR == "PN":  # a person's name: each name component on its own as well
                for part in re.split(r"[\^= ]+", text):
                    if part:
                        out.setdefault(part, keyword)
    return {v: k for v, k in out.items() if len(v) >= MIN_LENGTH}


def planted_values_from_dicom(paths: Iterable[str | Path]) -> set[str]:
    """Every identifier value in the PHI tags (:data:`IDENTIFIER_KEYWORDS`) of these DICOM files (person names
    also by component). Raises on an unreadable file: tests know their inputs."""
    values: set[str] = set()
    for path in paths:
        values.update(_header_values(path, IDENTIFIER_KEYWORDS))
    return values


# ---------------------------------------------------------------------- what a file holds
def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _member_texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(location, text) pairs for one file's content, recursing into containers (text in its own case)."""
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
        yield name, _decode(data[: 12 + header_len])
    elif data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        yield from _raster_texts(name, data)
    else:
        yield from _plain_texts(name, _decode(data))


def _plain_texts(name: str, text: str) -> Iterator[tuple[str, str]]:
    """A text file; embedded ``data:`` URIs are decoded and scanned as files of their own (their base64 text,
    blanked to the same length, would only produce chance pattern matches)."""
    embedded: list[bytes] = []

    def blank(m: re.Match) -> str:
        try:
            embedded.append(base64.b64decode(re.sub(r"\s+", "", m.group(1)), validate=True))
        except (binascii.Error, ValueError):
            pass
        return m.group(0)[: m.start(1) - m.start(0)] + " " * (m.end(1) - m.start(1))

    text = _DATA_URI.sub(blank, text)
    lower = name.lower()
    if lower.endswith((".html", ".htm", ".xml", ".svg")) and "&" in text:
        text = html.unescape(text)  # "O&#x27;Brien" is O'Brien on the page
    if lower.endswith(".json") and "\\u" in text:  # "M\\u00fcller" is Müller to a reader
        text = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    yield name, text
    for k, data in enumerate(embedded, 1):
        yield from _member_texts(f"{name}::embedded-{k}", data)


def _safetensors_header(data: bytes) -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return json.dumps(json.loads(data[8 : 8 + n]), ensure_ascii=False)


def _parquet_texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = table.schema.metadata or {}
    yield f"{name}::metadata", "\n".join(_decode(k) + "=" + _decode(v) for k, v in meta.items())
    for column in table.column_names:
        yield f"{name}::{column}", "\n".join(str(v) for v in table.column(column).to_pylist())


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
        fields = [
            f"{k}={_decode(v) if isinstance(v, bytes) else v}"
            for k, v in img.info.items()
            if isinstance(v, (str, bytes))
        ]
        fields += [_decode(v) if isinstance(v, bytes) else str(v) for v in img.getexif().values()]
    yield name, "\n".join(fields)


def _file_parts(path: Path) -> Iterator[tuple[str, str]]:
    """(location, text in its own case) for everything one file holds; zip archives are read member by member."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as archive:
            yield from _zip_texts(str(path), archive)
    else:
        yield from _member_texts(str(path), path.read_bytes())


def file_texts(path: str | Path) -> Iterator[tuple[str, str]]:
    """(location, lower-cased text) for everything one file holds; large zip archives are read member by member."""
    for where, text in _file_parts(Path(path)):
        yield where, text.lower()


def _files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in map(Path, items):
        out += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    return out


# ---------------------------------------------------------------------- planted values (tests)
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
    """(planted value, where) for every planted value found (as a substring, any case) in the files under
    ``paths``. For tests, which know their planted values; real use is :func:`scan_files`."""
    values = _check_values(planted)
    files = _files(paths)
    if not files:
        raise ValueError(f"no files to scan under {paths}")
    hits = []
    for path in files:
        for where, text in file_texts(path):
            hits += [(v, where) for v in values if v.lower() in text]
    return hits


# ---------------------------------------------------------------------- real use
@dataclass(frozen=True)
class PhiHit:
    """One identifier found: the file (relative to the scanned folder), where in it, and what kind of value.
    Never the value itself."""

    file: str
    location: str  # "line 12", "report_text, line 3" (a Parquet column's row), "embedded-1" (an image in a page)
    kind: str  # "planted value #3", "DICOM PatientName #12", "path component #4", "date", "e-mail address", ...

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "location": self.location, "kind": self.kind}


@dataclass
class PhiScanResult:
    """What :func:`scan_files` scanned and found. Holds counts and kinds only, never a checked value."""

    files: list[str]  # the scanned files, relative to the folder given (or their names)
    parts_scanned: int  # decoded texts: files, archive members, Parquet columns, embedded images
    values_checked: int
    values_skipped_short: int
    hashes_checked: int
    patterns: list[str]
    allowed: int  # exact strings the caller declared safe
    hits: list[PhiHit] = field(default_factory=list)

    @property
    def files_scanned(self) -> int:
        return len(self.files)

    @property
    def ok(self) -> bool:
        return not self.hits

    def to_dict(self, max_hits: int = 200) -> dict[str, Any]:
        """JSON-safe: counts, file names relative to the scanned folder, and at most ``max_hits`` hits."""
        return {
            "ok": self.ok,
            "files_scanned": self.files_scanned,
            "files": list(self.files),
            "parts_scanned": self.parts_scanned,
            "values_checked": self.values_checked,
            "values_skipped_short": self.values_skipped_short,
            "hashes_checked": self.hashes_checked,
            "patterns": list(self.patterns),
            "allowed": self.allowed,
            "n_hits": len(self.hits),
            "hits": [h.to_dict() for h in self.hits[:max_hits]],
        }

    def summary(self) -> str:
        """One line for a log or a page."""
        what = [f"{self.files_scanned} files ({self.parts_scanned} parts)"]
        if self.values_checked:
            what.append(f"{self.values_checked} identifier values")
        if self.hashes_checked:
            what.append(f"{self.hashes_checked} salted identifier hashes")
        if self.patterns:
            what.append("patterns: " + ", ".join(dict.fromkeys(self.patterns)))
        head = "PHI scan of " + "; ".join(what)
        if self.ok:
            return head + ": no identifiers found"
        kinds: dict[str, int] = {}
        for h in self.hits:
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
        return head + f": {len(self.hits)} hits (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")"


def _plausible_date(text: str) -> bool:
    """A numeric date needs a plausible day and month and a 2- or 4-digit year (``2.14.1`` and ``0.1.0`` are
    versions); other date shapes (month names, YYYYMMDD) are dates by construction."""
    m = _NUMERIC_DATE.match(text)
    if m is None:
        return True
    a, b, c = m.group(1), m.group(3), m.group(4)

    def day_month(x: str, y: str) -> bool:  # (month, day) or (day, month)
        i, j = int(x), int(y)
        return (1 <= i <= 12 and 1 <= j <= 31) or (1 <= i <= 31 and 1 <= j <= 12)

    if len(a) == 4:
        return 1800 <= int(a) <= 2199 and 1 <= int(b) <= 12 and 1 <= int(c) <= 31
    if len(c) == 4:
        return 1800 <= int(c) <= 2199 and day_month(a, b)
    return len(c) == 2 and len(a) <= 2 and len(b) <= 2 and day_month(a, b)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _value_table(values: Iterable[str] | Mapping[str, str]) -> tuple[list[tuple[str, re.Pattern[str], str]], int]:
    """[(lower-cased value, whole-value pattern, kind)], and how many values were too short to check."""
    labels = dict(values) if isinstance(values, Mapping) else dict.fromkeys(values, "planted value")
    clean: dict[str, str] = {}
    for value, label in labels.items():
        text = str(value).strip()
        if text:
            clean.setdefault(text, str(label))
    ordered = sorted(clean)
    table, short = [], 0
    for i, value in enumerate(ordered, 1):
        if len(value) < MIN_LENGTH:
            short += 1
            continue
        low = value.lower()
        # a whole value: not glued to further letters or digits ("Smith" is not in "Smithson", "20431" not in "120431")
        pattern = re.compile(r"(?<![0-9a-z])" + re.escape(low) + r"(?![0-9a-z])")
        table.append((low, pattern, f"{clean[value]} #{i}"))
    return table, short


def scan_files(
    paths: str | Path | Iterable[str | Path],
    values: Iterable[str] | Mapping[str, str] = (),
    patterns: Iterable[tuple[str, re.Pattern[str]]] = DEFAULT_PATTERNS,
    *,
    allow: Iterable[str] = (),
    allow_patterns: Iterable[re.Pattern[str]] = DEFAULT_ALLOW_PATTERNS,
    phi_hashes: Iterable[str] = (),
    salt: str | None = None,
    root: str | Path | None = None,
) -> PhiScanResult:
    """Scan every file under ``paths`` (files or folders, recursively) for identifiers; report kinds, never values.

    ``values``: identifier values to look for as whole values (any case), a set of strings (hits named
    "planted value #i") or a mapping {value: where it came from} (:attr:`ManifestIdentifiers.values`; hits named
    "DICOM PatientName #i"); ``i`` is the value's 1-based position in ``sorted(values)``. Values shorter than
    :data:`MIN_LENGTH` are skipped and counted. ``patterns``: (kind, regex) identifier shapes
    (:data:`DEFAULT_PATTERNS`; ``()`` for none). ``allow``: exact strings known to be safe (case-insensitive), masked
    with ``allow_patterns`` (:data:`DEFAULT_ALLOW_PATTERNS`) before the patterns run. ``phi_hashes`` + ``salt``:
    salted hashes of identifier tokens (``medclip.deid.hash_identifier`` of each lower-cased token, what the indexer
    computes as ``phi_hashes``): a token of the output whose hash is among them is a hit ("salted-hash match").
    ``root``: files are named relative to it (else relative to the folder given, else by their names).
    """
    files = _files(paths)
    roots = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else list(paths))]
    table, short = _value_table(values)
    kinds = [(kind, pattern) for kind, pattern in patterns]
    allowed = sorted({a.strip().lower() for a in allow if a and a.strip()})
    allow_res = list(allow_patterns)
    hashes = {h for h in phi_hashes if h}

    def display(path: Path) -> str:
        for folder in ([Path(root)] if root is not None else []) + roots:
            if folder.is_dir() and path.is_relative_to(folder):
                return path.relative_to(folder).as_posix()
        return path.name

    hits: list[PhiHit] = []
    seen: set[tuple[str, str, str]] = set()
    n_parts = 0

    def add(file: str, where: str, line: int, kind: str) -> None:
        location = f"{where}, line {line}" if where else f"line {line}"
        key = (file, location, kind)
        if key not in seen:
            seen.add(key)
            hits.append(PhiHit(file, location, kind))

    for path in files:
        shown = display(path)
        for where, text in _file_parts(path):
            n_parts += 1
            inner = where[len(str(path)) :].lstrip(":|")
            low = text.lower()
            for value, pattern, kind in table:
                if value in low:
                    for m in pattern.finditer(low):
                        add(shown, inner, _line(text, m.start()), kind)
            if not kinds and not hashes:
                continue
            spans = [m.span() for a in allowed for m in re.finditer(re.escape(a), low)]
            spans += [m.span() for rx in allow_res for m in rx.finditer(text)]
            masked = _mask(text, spans) if spans else text
            for kind, rx in kinds:
                found = [m for m in rx.finditer(masked) if kind != "date" or _plausible_date(m.group(0))]
                for m in found:
                    add(shown, inner, _line(text, m.start()), kind)
                if found:  # one hit per span: a date is not also an ID-like number
                    masked = _mask(masked, [m.span() for m in found])
            if hashes and salt:
                for i, line in enumerate(masked.split("\n"), 1):
                    if line.strip() and scrub_with_hashes(line, hashes, salt) != line:
                        add(shown, inner, i, "salted-hash match")
    return PhiScanResult(
        files=[display(p) for p in files],
        parts_scanned=n_parts,
        values_checked=len(table),
        values_skipped_short=short,
        hashes_checked=len(hashes) if salt else 0,
        patterns=[kind for kind, _ in kinds],
        allowed=len(allowed),
        hits=hits,
    )


# ---------------------------------------------------------------------- identifier values a user has
#: Folder and file-name parts that name a data set's structure, not a person (split, label, modality folders).
GENERIC_PATH_PARTS = frozenset(
    {
        "images",
        "image",
        "imgs",
        "dicom",
        "dicoms",
        "series",
        "study",
        "studies",
        "patients",
        "patient",
        "train",
        "training",
        "valid",
        "validation",
        "test",
        "testing",
        "export",
        "exports",
        "files",
        "data",
        "dataset",
        "datasets",
        "normal",
        "abnormal",
        "pneumonia",
        "bacteria",
        "virus",
        "covid",
        "positive",
        "negative",
        "frontal",
        "lateral",
        "scans",
        "volumes",
        "nifti",
        "slices",
        "reports",
        "unknown",
        "anonymous",
    }
)


@dataclass
class ManifestIdentifiers:
    """Identifier values collected from what a manifest points to (:func:`identifier_values_from_manifest`)."""

    values: dict[str, str]  # value -> where it came from ("DICOM PatientName", "path component"); never print them
    headers_read: int = 0
    headers_unreadable: int = 0
    headers_not_dicom: int = 0
    headers_over_limit: int = 0
    path_values: int = 0
    header_values: int = 0
    capped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Counts only (JSON-safe): never a value."""
        return {
            "values": len(self.values),
            "header_values": self.header_values,
            "path_values": self.path_values,
            "headers_read": self.headers_read,
            "headers_unreadable": self.headers_unreadable,
            "headers_not_dicom": self.headers_not_dicom,
            "headers_over_limit": self.headers_over_limit,
            "capped": self.capped,
        }


def _is_dicom_file(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # unreadable: let the reader count it
    return head[128:132] == b"DICM"


def _row_file(row: Mapping[str, Any]) -> str:
    files = row.get("files")
    if row.get("kind") == "volume" and files is not None and len(files):
        return str(files[0])
    return str(row.get("path") or "")


def _path_values(df: Any) -> dict[str, str]:
    """Folder names and file-name stems below the manifest's common folder that belong to one patient only."""
    import os

    paths = [str(p) for p in df["path"].fillna("")] if "path" in df else []
    if not paths:
        return {}
    dirs = [os.path.dirname(p) for p in paths if p]
    try:
        common = os.path.commonpath(dirs) if dirs else ""
    except ValueError:  # mixed absolute and relative paths
        common = ""
    patients = list(df["patient_id"].astype(str)) if "patient_id" in df else [str(i) for i in range(len(paths))]
    owners: dict[str, set[str]] = {}
    for p, patient in zip(paths, patients):
        rel = os.path.relpath(p, common) if common and p else p
        parts = Path(rel).parts
        if not parts:
            continue
        stem = parts[-1].split(".")[0]
        for part in (*parts[:-1], stem):
            text = part.strip()
            if len(text) < MIN_LENGTH or text.lower() in GENERIC_PATH_PARTS or text in (".", ".."):
                continue
            owners.setdefault(text, set()).add(patient)
    # a folder shared by several patients (a site, a label, a date batch) identifies none of them
    return {v: "path component" for v, who in owners.items() if len(who) == 1}


def identifier_values_from_manifest(
    manifest_df: Any,
    *,
    read_headers: bool = True,
    limit: int = 1000,
    max_values: int = 100_000,
    keywords: Iterable[str] = (*IDENTIFIER_KEYWORDS, *UID_KEYWORDS),
) -> ManifestIdentifiers:
    """The identifier values a report about this manifest must never show, from what a user has.

    - the PHI tags (``keywords``: names, IDs, birth date, institution, staff; instance UIDs) of the DICOM headers
      the manifest points to (absolute paths, as :func:`medclip.data.manifest.read_manifest` gives them): one
      file per study, at most ``limit`` files (the rest counted in ``headers_over_limit``); a file that is not
      DICOM is counted, one that cannot be read is counted and skipped;
    - the path components of the ``path`` column below the folder all rows share (folder names and file-name
      stems can be patient names or IDs), except generic ones (:data:`GENERIC_PATH_PARTS`), ones shorter than
      :data:`MIN_LENGTH` and ones that several patients share.

    At most ``max_values`` values are kept (``capped`` says so). Pass ``.values`` to :func:`scan_files`.
    """
    from medclip.io import phi_safe_reading

    result = ManifestIdentifiers(values={})
    header: dict[str, str] = {}
    if read_headers and "path" in manifest_df and len(manifest_df):
        frame = manifest_df
        if "study_id" in frame:
            frame = frame.drop_duplicates("study_id")
        keys = tuple(keywords)
        for i, row in enumerate(frame.to_dict("records")):
            if i >= limit:
                result.headers_over_limit = len(frame) - limit
                break
            file = _row_file(row)
            if not file or not _is_dicom_file(Path(file)):
                result.headers_not_dicom += 1
                continue
            try:
                with phi_safe_reading():
                    found = _header_values(file, keys)
            except Exception:  # any unreadable header: counted, never named
                result.headers_unreadable += 1
                continue
            result.headers_read += 1
            for value, keyword in found.items():
                header.setdefault(value, f"DICOM {keyword}")
    paths = _path_values(manifest_df) if "path" in manifest_df else {}
    merged = dict(header)
    for value, label in paths.items():
        merged.setdefault(value, label)
    if len(merged) > max_values:
        merged = dict(list(merged.items())[:max_values])
        result.capped = True
    result.values = merged
    result.header_values = sum(1 for label in merged.values() if label.startswith("DICOM "))
    result.path_values = len(merged) - result.header_values
    return result
