"""Leakage audit of a manifest's splits: the same patient, the same image or the same report in two splits.

Four checks, each counted per split pair (``"train/test"``) and shown with salted ids only (never paths):

- **patients** in more than one split (:func:`patient_overlap`; by the manifest's salted ``patient_id``): must be 0;
- **one image id in several rows** of different splits (:func:`repeated_images`: a table naming one file under two
  patient ids);
- **near-duplicate images** across splits (:func:`near_duplicate_images`): the same picture exported twice, resized,
  re-encoded, cropped by a few pixels or windowed differently, under two patient ids (one archive's copy of another's
  case, a case published twice). Each image is what the model sees (the kit's ``preprocess`` at 128 px) without its
  dark margins (:func:`content`); a pair is a near duplicate when the pHash (64 bits) of the two differs in at most
  :data:`DEFAULT_THRESHOLD` bits (chunked numpy XOR + popcount over all pairs: 50,000 images in ~5-10 s on 2 cores)
  and the rank correlation of 32 x 32 signatures (Spearman's rho of the pixels: blind to any monotonic change of grey
  levels) is at least :data:`DEFAULT_MIN_CORRELATION`;
- **identical report texts** across splits (:func:`duplicate_reports`; case and whitespace normalised; empty and
  ``XXXX``-only texts ignored; a text shared by many patients is a template, counted apart).

Why this detector (``benchmarks/leakage.py``: 1,267 real chest X-rays, 427 covid-chestxray + 600 Kermany + 240
planted copies: 0.5x / 2x, JPEG q30-70, crops of 2-8 px, gamma 0.7 / a 5-95 % contrast stretch, two combinations;
distractors are all other pairs, the different films of one patient among them):

    detector                            recall  FP same patient  FP other patient, a Kermany image (per 1M pairs)
    pHash <= 8                           0.979               18      144 (180)
    pHash <= 10                          0.996               29      644 (803)
    pHash <= 10 and rank corr >= 0.93    0.988                7        4 (5.0)    <- the default
    pHash <= 10 and rank corr >= 0.96    0.954                7        0          (misses crops of 8 px)
    dHash <= 8                           0.988               78      34,342
    wHash <= 6                           0.992               47      17,758
    encoder cosine >= 0.95 (224 px)      0.717                6        0          (170 s for the features)
    encoder cosine >= 0.90 (224 px)      0.887               24       81

A hash alone cannot separate a copy from another child's film taken on the same machine (pediatric chest X-rays
are nearly alike at 64 bits); the default model's image features miss most copies (the encoder has not learnt what
makes two radiographs the same picture). The misses of the default are copies cropped by 8 px of a 224 px image
(3.6 %) and one crop + gamma + JPEG combination. Pairs of two covid images of different patient ids (14 at the
default) are left out of the FP column: most are the set's own copies (one case published under two patient ids),
which the benchmark's audit of that set lists.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_ORDER = ("train", "val", "test")

#: Perceptual hashes available (imagehash's): name -> hash function of a PIL image.
HASH_METHODS = ("phash", "dhash", "whash")
DEFAULT_METHOD = "phash"
#: Hamming distance (of 64 bits) at or below which two images are candidate near duplicates.
DEFAULT_THRESHOLD = 10
#: Rank correlation of the 32 x 32 signatures a candidate pair needs to be called a near duplicate.
DEFAULT_MIN_CORRELATION = 0.93
#: Side of the rank signature (:func:`image_signature`).
SIGNATURE_SIZE = 32
#: Side of the square the images are hashed at (the kit's preprocess: window, letterbox, resize).
AUDIT_IMAGE_SIZE = 128

#: A text held by more than this many patients is a template ("No acute cardiopulmonary abnormality."), not a leak.
TEMPLATE_PATIENTS = 5
#: Texts with fewer words than this (after removing ``XXXX``) are too short to call duplicates.
MIN_REPORT_WORDS = 3
REPORT_COLUMNS = ("report_text", "report_indication", "report_findings", "report_impression")


def split_pair(a: str, b: str) -> str:
    """``"train/test"``: the two splits in the kit's order (train, val, test, then others alphabetically)."""

    def key(s: str) -> tuple[int, str]:
        return (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)

    x, y = sorted((str(a), str(b)), key=key)
    return f"{x}/{y}"


def _pair_counts(split_sets: Iterable[Iterable[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for splits in split_sets:
        for a, b in itertools.combinations(sorted(set(splits)), 2):
            key = split_pair(a, b)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------- patients
@dataclass
class PatientOverlap:
    """Patients (salted ids) whose rows fall in more than one split."""

    n_patients: int
    patients: list[str]  # salted ids of the patients in several splits
    pairs: dict[str, int]  # "train/test" -> patients in both
    rows: int  # manifest rows of those patients

    @property
    def n_leaked(self) -> int:
        return len(self.patients)

    def to_dict(self, max_ids: int = 50) -> dict[str, Any]:
        return {
            "n_patients": self.n_patients,
            "n_in_several_splits": self.n_leaked,
            "pairs": dict(self.pairs),
            "rows": self.rows,
            "patient_ids": self.patients[:max_ids],
        }


def patient_overlap(df: Any, patient_col: str = "patient_id", split_col: str = "split") -> PatientOverlap:
    """Patients in more than one split, counted per split pair (:func:`medclip.data.splits.patients_in_several_splits`)."""
    from medclip.data.splits import patients_in_several_splits

    if df.empty or patient_col not in df or split_col not in df:
        return PatientOverlap(0, [], {}, 0)
    frame = df[df[patient_col].fillna("").astype(str).str.len() > 0]
    leaked = patients_in_several_splits(frame, patient_col, split_col)
    sub = frame[frame[patient_col].astype(str).isin(leaked)]
    sets = sub.groupby(patient_col)[split_col].agg(lambda s: set(map(str, s))).tolist() if leaked else []
    return PatientOverlap(int(frame[patient_col].nunique()), leaked, _pair_counts(sets), int(len(sub)))


# ---------------------------------------------------------------------- the same image id in several rows
@dataclass
class RepeatedImages:
    """Image ids (salted hashes of the instance) that more than one manifest row holds: one image listed twice
    (a public table naming one file under two patient ids)."""

    n_repeated: int  # image ids in more than one row
    image_ids: list[str]  # of them, the ids in more than one split
    pairs: dict[str, int]  # "train/val" -> ids in both

    @property
    def n_cross_split(self) -> int:
        return len(self.image_ids)

    def to_dict(self, max_ids: int = 50) -> dict[str, Any]:
        return {
            "n_repeated": self.n_repeated,
            "n_cross_split": self.n_cross_split,
            "pairs": dict(self.pairs),
            "image_ids": self.image_ids[:max_ids],
        }


def repeated_images(df: Any, image_col: str = "image_id", split_col: str = "split") -> RepeatedImages:
    """Image ids held by several rows, and those held in more than one split (exact copies: leaks)."""
    if df.empty or image_col not in df or split_col not in df:
        return RepeatedImages(0, [], {})
    ids = df[image_col].fillna("").astype(str)
    frame = df[ids.str.len() > 0]
    counts = frame.groupby(image_col).size()
    repeated = counts[counts > 1].index
    sub = frame[frame[image_col].isin(repeated)]
    sets = sub.groupby(image_col)[split_col].agg(lambda s: sorted(set(map(str, s))))
    cross = sets[sets.map(len) > 1]
    return RepeatedImages(int(len(repeated)), sorted(map(str, cross.index)), _pair_counts(cross.tolist()))


# ---------------------------------------------------------------------- reports
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


def normalise_report(text: object) -> str:
    """Lower case, whitespace collapsed; ``""`` when fewer than :data:`MIN_REPORT_WORDS` words besides ``XXXX``."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    norm = _WS.sub(" ", str(text)).strip().lower()
    words = [w for w in _WORD.findall(norm) if w != "xxxx"]
    return norm if len(words) >= MIN_REPORT_WORDS else ""


def _row_report(row: Mapping[str, Any]) -> str:
    """A row's report: ``report_text``, else its sections joined."""
    text = row.get("report_text")
    if isinstance(text, str) and text.strip():
        return text
    parts = [row.get(c) for c in REPORT_COLUMNS[1:]]
    return " ".join(p for p in parts if isinstance(p, str) and p.strip())


@dataclass
class ReportDuplicates:
    """Identical report texts (normalised) held by rows of different splits."""

    n_texts: int  # distinct non-empty report texts
    n_cross_split: int  # of them, held in more than one split (templates excluded)
    pairs: dict[str, int]  # "train/test" -> distinct texts in both
    rows: int  # rows holding one of those texts
    n_templates: int  # texts in several splits but held by more than TEMPLATE_PATIENTS patients
    n_within_split: int  # texts repeated by different patients of one split (information)
    examples: list[dict[str, Any]] = field(default_factory=list)  # {"splits", "patients", "rows", "excerpt"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_texts": self.n_texts,
            "n_cross_split": self.n_cross_split,
            "pairs": dict(self.pairs),
            "rows": self.rows,
            "n_templates": self.n_templates,
            "n_within_split_other_patients": self.n_within_split,
            "examples": [dict(e) for e in self.examples],
        }


def duplicate_reports(
    df: Any,
    *,
    split_col: str = "split",
    patient_col: str = "patient_id",
    template_patients: int = TEMPLATE_PATIENTS,
    max_examples: int = 5,
    excerpt_chars: int = 80,
) -> ReportDuplicates:
    """Report texts (case and whitespace normalised) that rows of more than one split hold.

    Rows of one study repeat its report: a text is counted once per split, and only a text held in two splits is a
    leak. A text held by more than ``template_patients`` patients is a template (a normal-study phrase), counted in
    ``n_templates`` and not in the pairs. Examples are short excerpts, scrubbed by
    :func:`medclip.data.reports.scrub_identifiers`.
    """
    from medclip.data.reports import scrub_identifiers

    if df.empty or split_col not in df:
        return ReportDuplicates(0, 0, {}, 0, 0, 0)
    cols = [c for c in REPORT_COLUMNS if c in df]
    if not cols:
        return ReportDuplicates(0, 0, {}, 0, 0, 0)
    groups: dict[str, dict[str, Any]] = {}
    records = df[[*cols, split_col, *([patient_col] if patient_col in df else [])]].to_dict("records")
    for i, row in enumerate(records):
        raw = _row_report(row)
        norm = normalise_report(raw)
        if not norm:
            continue
        g = groups.setdefault(norm, {"splits": set(), "patients": set(), "rows": 0, "raw": raw})
        g["splits"].add(str(row[split_col]))
        g["patients"].add(str(row.get(patient_col, i)))
        g["rows"] += 1
    cross = {t: g for t, g in groups.items() if len(g["splits"]) > 1}
    templates = {t for t, g in cross.items() if len(g["patients"]) > template_patients}
    leaks = {t: g for t, g in cross.items() if t not in templates}
    within = sum(1 for g in groups.values() if len(g["splits"]) == 1 and len(g["patients"]) > 1)
    ordered = sorted(leaks.values(), key=lambda g: (-g["rows"], sorted(g["splits"])))
    examples = []
    for g in ordered[:max_examples]:
        text = _WS.sub(" ", scrub_identifiers(str(g["raw"]))).strip()
        excerpt = text if len(text) <= excerpt_chars else text[: excerpt_chars - 1].rstrip() + "…"
        examples.append(
            {
                "splits": [split_pair(*p) for p in itertools.combinations(sorted(g["splits"]), 2)],
                "patients": len(g["patients"]),
                "rows": g["rows"],
                "excerpt": excerpt,
            }
        )
    return ReportDuplicates(
        n_texts=len(groups),
        n_cross_split=len(leaks),
        pairs=_pair_counts(g["splits"] for g in leaks.values()),
        rows=sum(g["rows"] for g in leaks.values()),
        n_templates=len(templates),
        n_within_split=within,
        examples=examples,
    )


# ---------------------------------------------------------------------- images
def _hash_function(method: str) -> Callable[[Any], Any]:
    import imagehash

    if method not in HASH_METHODS:
        raise ValueError(f"method must be one of {HASH_METHODS}, got {method!r}")
    return {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[method]


def _as_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return arr


def content(image: np.ndarray, dark: int = 16) -> np.ndarray:
    """The image without its dark margins (letterbox bars, black borders: rows and columns whose 90th percentile is
    at most ``dark``, JPEG noise in a border included): the part a copy shares whatever its aspect ratio or border
    after cropping. An image with fewer than 8 bright rows or columns is returned whole."""
    arr = _as_uint8(image)
    rows = np.flatnonzero(np.percentile(arr, 90, axis=1) > dark)
    cols = np.flatnonzero(np.percentile(arr, 90, axis=0) > dark)
    if len(rows) < 8 or len(cols) < 8:
        return arr
    return arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def image_hash(image: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """The perceptual hash (imagehash's ``method``, 64 bits) of a uint8 (H, W) image's :func:`content`, packed as
    one uint64 word (shape (1,))."""
    from PIL import Image

    bits = np.asarray(_hash_function(method)(Image.fromarray(content(image))).hash, dtype=bool).ravel()
    packed = np.packbits(bits)
    packed = np.pad(packed, (0, (-len(packed)) % 8))
    return packed.view(">u8").astype(np.uint64)


def image_signature(image: np.ndarray, size: int = SIGNATURE_SIZE) -> np.ndarray:
    """The ranks (uint16) of the pixels of the image's :func:`content` shrunk to ``size`` x ``size`` (box filter):
    rank order is unchanged by any monotonic change of grey levels (another window, gamma, contrast)."""
    from PIL import Image

    small = np.asarray(Image.fromarray(content(image)).resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
    return np.argsort(np.argsort(small.ravel(), kind="stable"), kind="stable").astype(np.uint16)


def signature_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of rank signatures (:func:`image_signature`): Spearman's rho of the pixels."""
    n = a.shape[-1]
    mean, var = (n - 1) / 2.0, (n * n - 1) / 12.0
    x = a.astype(np.float32) - mean
    y = b.astype(np.float32) - mean
    return np.einsum("ij,ij->i", x, y) / (n * var)


def hamming_pairs(
    codes: np.ndarray, threshold: int, *, max_elements: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows of ``codes`` (uint64 (n, words)) within ``threshold`` differing bits:
    (i, j, distance). Chunked XOR + popcount: memory stays under ``max_elements`` words at a time."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if codes.ndim == 1:
        codes = codes[:, None]
    n, words = codes.shape
    out_i, out_j, out_d = [], [], []
    chunk = max(1, max_elements // max(1, n * words))
    for start in range(0, n, chunk):
        block = codes[start : start + chunk]
        rest = codes[start:]
        dist = np.bitwise_count(block[:, 0, None] ^ rest[None, :, 0])  # uint8: at most 64 per word
        if words > 1:
            dist = dist.astype(np.uint16)
            for w in range(1, words):
                dist += np.bitwise_count(block[:, w, None] ^ rest[None, :, w])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii  # rest starts at `start`: column jj is row start + jj, row ii is start + ii
        out_i.append(ii[keep] + start)
        out_j.append(jj[keep] + start)
        out_d.append(dist[ii[keep], jj[keep]])
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.uint16)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d).astype(np.uint16)


def candidate_pairs(
    codes: np.ndarray,
    signatures: np.ndarray | None,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float | None = DEFAULT_MIN_CORRELATION,
    *,
    chunk: int = 200_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs (i, j, Hamming distance, correlation): hashes within ``threshold`` bits, then (unless
    ``min_correlation`` is None) rank signatures correlated at least ``min_correlation`` (NaN when not checked)."""
    ii, jj, dd = hamming_pairs(codes, threshold)
    corr = np.full(len(ii), np.nan, dtype=np.float32)
    if min_correlation is None or signatures is None or not len(ii):
        return ii, jj, dd, corr
    for start in range(0, len(ii), chunk):
        sl = slice(start, start + chunk)
        corr[sl] = signature_correlation(signatures[ii[sl]], signatures[jj[sl]])
    keep = corr >= min_correlation
    return ii[keep], jj[keep], dd[keep], corr[keep]


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(_as_uint8(image)).resize((size, size), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class ImagePair:
    """Two near-duplicate images (salted image ids), their splits, Hamming distance and signature correlation."""

    a: str
    b: str
    split_a: str
    split_b: str
    distance: int
    correlation: float | None = None
    same_patient: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "split_a": self.split_a,
            "split_b": self.split_b,
            "distance": self.distance,
            "correlation": None if self.correlation is None else round(self.correlation, 4),
            "same_patient": self.same_patient,
        }


@dataclass
class NearDuplicates:
    """Near-duplicate image pairs: across splits (leaks) and within one split (information)."""

    method: str
    threshold: int
    min_correlation: float | None
    n_images: int
    cross_split: list[ImagePair]  # closest first (correlation, then distance)
    pairs: dict[str, int]  # "train/test" -> cross-split pairs
    n_within_split: int  # pairs inside one split
    n_within_split_other_patient: int | None  # of them, between two different patients (None: patients unknown)
    n_unreadable: int = 0  # images the reader skipped (the manifest convenience)
    n_without_split: int = 0  # images whose id is not in the split table (not compared)
    thumbnails: list[tuple[ImagePair, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def n_cross_split(self) -> int:
        return len(self.cross_split)

    @property
    def n_images_cross_split(self) -> int:
        return len({p.a for p in self.cross_split} | {p.b for p in self.cross_split})

    def criterion(self) -> str:
        """How a pair was called a near duplicate, in words."""
        text = f"{self.method} Hamming <= {self.threshold} of 64 bits"
        if self.min_correlation is not None:
            text += f" and rank correlation >= {self.min_correlation:g}"
        return text

    def to_dict(self, max_pairs: int = 50) -> dict[str, Any]:
        """JSON-safe; ``thumbnail_pairs`` lists the pairs whose (a, b) uint8 thumbnails are in ``.thumbnails``."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "min_correlation": self.min_correlation,
            "criterion": self.criterion(),
            "n_images": self.n_images,
            "n_unreadable": self.n_unreadable,
            "n_without_split": self.n_without_split,
            "n_cross_split": self.n_cross_split,
            "n_images_cross_split": self.n_images_cross_split,
            "pairs": dict(self.pairs),
            "n_within_split": self.n_within_split,
            "n_within_split_other_patient": self.n_within_split_other_patient,
            "cross_split_pairs": [p.to_dict() for p in self.cross_split[:max_pairs]],
            "thumbnail_pairs": [p.to_dict() for p, _, _ in self.thumbnails],
        }


def near_duplicate_images(
    images: Iterable[tuple[str, np.ndarray]],
    splits: Mapping[str, str],
    *,
    patients: Mapping[str, str] | None = None,
    method: str = DEFAULT_METHOD,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float | None = DEFAULT_MIN_CORRELATION,
    top_k: int = 8,
    thumb_size: int = 48,
    n_unreadable: int = 0,
) -> NearDuplicates:
    """Pairs of images that are copies of one another: perceptual hashes (of each image's :func:`content`) within
    ``threshold`` of 64 bits, confirmed by a rank correlation of 32 x 32 signatures of at least ``min_correlation``
    (None: the hash alone decides).

    ``images``: (image_id, uint8 (H, W) array) pairs, e.g. :class:`ManifestImages` (the kit's preprocess of each
    manifest row) or :func:`cache_images`. ``splits`` (and optionally ``patients``): image_id -> split (patient).
    Images without a split are counted and not compared. Pairs across splits are leaks; pairs within a split are
    counted (same or another patient). The ``top_k`` closest cross-split pairs keep (a, b) thumbnails of
    ``thumb_size`` px. Memory: about ``n * (8 + 2 * 32**2 + thumb_size**2)`` bytes (5 KB per image at 48 px).
    """
    ids: list[str] = []
    codes: list[np.ndarray] = []
    sigs: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    missing = 0
    seen: set[str] = set()
    for image_id, image in images:
        key = str(image_id)
        if key not in splits:
            missing += 1
            continue
        if key in seen:  # one image listed in two rows: compared once (repeated_images reports it)
            continue
        seen.add(key)
        arr = _as_uint8(image)
        ids.append(key)
        codes.append(image_hash(arr, method))
        if min_correlation is not None:
            sigs.append(image_signature(arr))
        thumbs.append(_thumbnail(arr, thumb_size))
    matrix = np.stack(codes) if codes else np.zeros((0, 1), dtype=np.uint64)
    signatures = np.stack(sigs) if sigs else None
    ii, jj, dd, cc = candidate_pairs(matrix, signatures, threshold, min_correlation)
    split_of = [str(splits[k]) for k in ids]
    cross: list[ImagePair] = []
    cross_idx: list[tuple[int, int]] = []
    within = within_other = 0
    for i, j, d, c in zip(ii.tolist(), jj.tolist(), dd.tolist(), cc.tolist()):
        same = None if patients is None else str(patients.get(ids[i], "")) == str(patients.get(ids[j], "?"))
        if split_of[i] == split_of[j]:
            within += 1
            within_other += int(same is False)
            continue
        a, b = (i, j) if split_pair(split_of[i], split_of[j]).startswith(split_of[i] + "/") else (j, i)
        corr = None if np.isnan(c) else float(c)
        cross.append(ImagePair(ids[a], ids[b], split_of[a], split_of[b], int(d), corr, same))
        cross_idx.append((a, b))
    order = sorted(
        range(len(cross)),
        key=lambda k: (-(cross[k].correlation or 0.0), cross[k].distance, cross[k].a, cross[k].b),
    )
    cross = [cross[k] for k in order]
    cross_idx = [cross_idx[k] for k in order]
    return NearDuplicates(
        method=method,
        threshold=int(threshold),
        min_correlation=min_correlation,
        n_images=len(ids),
        cross_split=cross,
        pairs=_pair_counts([p.split_a, p.split_b] for p in cross),
        n_within_split=within,
        n_within_split_other_patient=None if patients is None else within_other,
        n_unreadable=n_unreadable,
        n_without_split=missing,
        thumbnails=[(p, thumbs[a], thumbs[b]) for p, (a, b) in zip(cross[:top_k], cross_idx[:top_k])],
    )


class ManifestImages:
    """(image_id, uint8 image) of each 2D row of a manifest, read through the kit's one path
    (:func:`medclip.data.cache.preprocess_row` at ``image_size`` px, the window of ``window``), with a progress bar.
    Unreadable rows are skipped and counted (``unreadable``), and so are volume rows (``volumes``) and rows repeating
    an image id already read (``repeated``)."""

    def __init__(
        self, df: Any, *, image_size: int = AUDIT_IMAGE_SIZE, window: str = "auto", progress: bool = True
    ) -> None:
        self.df = df
        self.image_size = image_size
        self.window = window
        self.progress = progress
        self.read = 0
        self.unreadable = 0
        self.volumes = 0
        self.repeated = 0

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from tqdm.auto import tqdm

        from medclip.data.cache import preprocess_row
        from medclip.model.preprocess import PreprocessConfig

        cfg = PreprocessConfig(image_size=self.image_size, window=self.window)
        rows = self.df.to_dict("records")
        seen: set[str] = set()
        for row in tqdm(rows, desc="leakage audit: images", unit="img", disable=not self.progress):
            if row.get("kind") == "volume":
                self.volumes += 1
                continue
            if str(row["image_id"]) in seen:  # the same image in another row: read once
                self.repeated += 1
                continue
            seen.add(str(row["image_id"]))
            try:
                image = preprocess_row(row, cfg)
            except Exception:  # any unreadable file: counted; its name is not logged (paths can hold PHI)
                self.unreadable += 1
                continue
            self.read += 1
            yield str(row["image_id"]), image


def cache_images(cache_dir: str | Path, split: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, uint8 image) of the 2D samples of a cache (``medclip cache``'s shards); volumes are skipped."""
    from medclip.data.cache import iter_cache

    for sample in iter_cache(cache_dir, split):
        image = sample.get("image")
        if image is not None and image.ndim == 2 and image.dtype == np.uint8:
            yield str(sample["__key__"]), image


# ---------------------------------------------------------------------- all three
@dataclass
class LeakageAudit:
    """The three checks of one manifest (``images`` is None when no images were given)."""

    patients: PatientOverlap
    repeated: RepeatedImages
    reports: ReportDuplicates
    images: NearDuplicates | None

    @property
    def ok(self) -> bool:
        """No patient, image id, report or near-duplicate image shared between splits."""
        return (
            self.patients.n_leaked == 0
            and self.repeated.n_cross_split == 0
            and self.reports.n_cross_split == 0
            and (self.images is None or self.images.n_cross_split == 0)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, ids salted, no paths: {"ok", "patients", "repeated_images", "reports", "images"} (each part's
        to_dict; "images" is None when no images were given)."""
        return {
            "ok": self.ok,
            "patients": self.patients.to_dict(),
            "repeated_images": self.repeated.to_dict(),
            "reports": self.reports.to_dict(),
            "images": None if self.images is None else self.images.to_dict(),
        }

    def summary(self) -> str:
        """A few lines for a log or a page."""

        def pairs(d: dict[str, int]) -> str:
            return " (" + ", ".join(f"{k}: {v}" for k, v in d.items()) + ")" if d else ""

        p, r, rep = self.patients, self.reports, self.repeated
        lines = [
            f"patients in more than one split: {p.n_leaked} of {p.n_patients}{pairs(p.pairs)}",
            f"image ids in more than one split (one image listed twice): {rep.n_cross_split}{pairs(rep.pairs)}"
            + (f"; {rep.n_repeated} ids in several rows in all" if rep.n_repeated else ""),
            f"report texts in more than one split: {r.n_cross_split} of {r.n_texts} distinct texts{pairs(r.pairs)}"
            + (
                f"; {r.n_templates} template texts shared by > {TEMPLATE_PATIENTS} patients not counted"
                if r.n_templates
                else ""
            ),
        ]
        im = self.images
        if im is None:
            lines.append("near-duplicate images: not checked (no images given)")
        else:
            other = (
                f", {im.n_within_split_other_patient} of them between different patients"
                if im.n_within_split_other_patient is not None
                else ""
            )
            lines.append(
                f"near-duplicate images across splits ({im.criterion()}): "
                f"{im.n_cross_split} pairs, {im.n_images_cross_split} images{pairs(im.pairs)}; "
                f"within one split: {im.n_within_split} pairs{other}; {im.n_images} images compared"
                + (f", {im.n_unreadable} unreadable" if im.n_unreadable else "")
            )
        return "\n".join(lines)


def audit_leakage(
    df: Any,
    images: Iterable[tuple[str, np.ndarray]] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float | None = DEFAULT_MIN_CORRELATION,
    top_k: int = 8,
    thumb_size: int = 48,
) -> LeakageAudit:
    """Patients, report texts and (when ``images`` are given) near-duplicate images shared between splits.

    ``images``: (image_id, uint8 image) pairs: :class:`ManifestImages` ``(df)`` reads them from the manifest,
    :func:`cache_images` from a cache; ``None`` skips the image check.
    """
    ids = df["image_id"].astype(str).tolist() if "image_id" in df else []
    splits = dict(zip(ids, df["split"].astype(str))) if "split" in df else {}
    patients = dict(zip(ids, df["patient_id"].astype(str))) if "patient_id" in df else None
    dup = None
    if images is not None:
        dup = near_duplicate_images(
            images,
            splits,
            patients=patients,
            method=method,
            threshold=threshold,
            min_correlation=min_correlation,
            top_k=top_k,
            thumb_size=thumb_size,
        )
        if isinstance(images, ManifestImages):
            dup.n_unreadable = images.unreadable
    return LeakageAudit(patient_overlap(df), repeated_images(df), duplicate_reports(df), dup)
