"""Leakage audit (medclip.audit.leakage): planted leaks are found, a clean manifest reports none.

Real pediatric chest X-rays from the bundled Kermany subset (medclip.sample), read through the kit's one path.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclip.audit.leakage import (
    DEFAULT_MIN_FINE_CORRELATION,
    DEFAULT_THRESHOLD,
    ManifestImages,
    audit_leakage,
    duplicate_reports,
    fine_correlation,
    fine_view,
    hamming_pairs,
    image_hash,
    near_duplicate_images,
    patient_overlap,
)
from medclip.sample import SAMPLE_KERMANY

N = 36
SPLITS = ("train", "val", "test")
LOBES = ("upper", "middle", "lower")


def _originals() -> list[Path]:
    files = sorted((Path(str(SAMPLE_KERMANY)) / "images").glob("*.jpeg"))
    return files[: N * 5 : 5]  # every fifth: 36 different children


def _unused_image() -> Path:
    return sorted((Path(str(SAMPLE_KERMANY)) / "images").glob("*.jpeg"))[1]


def _clean_manifest() -> pd.DataFrame:
    rows = []
    for k, path in enumerate(_originals()):
        rows.append(
            {
                "image_id": f"img{k:03d}",
                "path": str(path),
                "kind": "image",
                "patient_id": f"pat{k:03d}",
                "study_id": f"st{k:03d}",
                "split": SPLITS[k % 3],
                "report_text": f"Study {k}: opacity in the {LOBES[k % 3]} zone, size {k + 2} cm; heart normal.",
            }
        )
    return pd.DataFrame(rows)


def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def _planted_manifest(tmp_path: Path) -> pd.DataFrame:
    df = _clean_manifest()
    src = [Image.open(p).convert("L") for p in _originals()[:2]]
    # a resized + re-encoded JPEG copy of a train image (img000), in test under another patient id
    small = src[0].resize((src[0].width // 2, src[0].height // 2), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=40)
    copy_a = _save(Image.open(buf), tmp_path / "copy_a.jpg", quality=95)
    # a copy cropped by 4 px (of img003, train) in val
    crop = Image.open(_originals()[3]).convert("L")
    copy_b = _save(crop.crop((4, 4, crop.width, crop.height)), tmp_path / "copy_b.png")
    extra = [
        {"image_id": "copyA", "path": copy_a, "patient_id": "patX", "split": "test", "report_text": ""},
        {"image_id": "copyB", "path": copy_b, "patient_id": "patY", "split": "val", "report_text": "XXXX XXXX."},
        # patient pat000 (train) also in test, with another image (one not in the clean manifest)
        {"image_id": "leakP", "path": str(_unused_image()), "patient_id": "pat000", "split": "test"},
        # img004 (val) listed again in test under another patient id: one image in two rows
        {"image_id": "img004", "path": str(_originals()[4]), "patient_id": "patZ", "split": "test"},
    ]
    for i, e in enumerate(extra):
        e.update({"kind": "image", "study_id": f"x{i}"})
        e.setdefault("report_text", "")
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    # the report of img001 (val) repeated, with other spacing and case, for img002 (test)
    df.loc[df["image_id"] == "img002", "report_text"] = "  " + df.loc[1, "report_text"].upper().replace(" ", "\n ")
    return df


def test_planted_leaks_are_found(tmp_path: Path) -> None:
    df = _planted_manifest(tmp_path)
    images = ManifestImages(df, progress=False)
    audit = audit_leakage(df, images)
    assert not audit.ok
    assert audit.patients.patients == ["pat000"] and audit.patients.pairs == {"train/test": 1}
    assert audit.patients.rows == 2
    assert audit.repeated.image_ids == ["img004"] and audit.repeated.pairs == {"val/test": 1}

    assert audit.reports.n_cross_split == 1 and audit.reports.pairs == {"val/test": 1}
    [example] = audit.reports.examples
    assert example["splits"] == ["val/test"] and example["excerpt"].startswith("Study 1: opacity")

    im = audit.images
    assert im is not None and images.read == N + 3 and images.unreadable == 0 and images.repeated == 1
    found = {(p.a, p.b) for p in im.cross_split}
    assert found == {("img000", "copyA"), ("img003", "copyB")}, im.to_dict()
    assert im.pairs == {"train/test": 1, "train/val": 1}
    assert len(im.thumbnails) == 2 and im.thumbnails[0][1].shape == (48, 48)
    assert all(p.same_patient is False for p in im.cross_split)
    assert all(
        p.fine_correlation is not None and p.fine_correlation >= DEFAULT_MIN_FINE_CORRELATION for p in im.cross_split
    )


def test_a_clean_manifest_reports_zero_of_each(tmp_path: Path) -> None:
    df = _clean_manifest()
    audit = audit_leakage(df, ManifestImages(df, progress=False))
    assert audit.ok, audit.summary()
    assert audit.patients.n_leaked == 0 and audit.reports.n_cross_split == 0 and audit.repeated.n_repeated == 0
    assert audit.images is not None and audit.images.n_cross_split == 0 and audit.images.n_images == N
    assert "patients in more than one split: 0 of 36" in audit.summary()


def test_to_dict_is_json_safe_and_holds_no_paths(tmp_path: Path) -> None:
    df = _planted_manifest(tmp_path)
    d = audit_leakage(df, ManifestImages(df, progress=False)).to_dict()
    text = json.dumps(d)
    assert str(tmp_path) not in text and "kermany" not in text.lower() and ".jpeg" not in text
    assert set(d) == {"ok", "patients", "repeated_images", "reports", "images"}
    assert d["images"]["n_cross_split"] == 2 and d["images"]["criterion"].startswith("phash Hamming <= ")
    assert "high-pass correlation >= " in d["images"]["criterion"]
    assert all(p["fine_correlation"] >= DEFAULT_MIN_FINE_CORRELATION for p in d["images"]["cross_split_pairs"])
    assert audit_leakage(df).to_dict()["images"] is None  # no images given: the image check is skipped


def test_templates_and_placeholder_texts_are_not_leaks() -> None:
    template = "No acute cardiopulmonary abnormality."
    df = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(10)],
            "split": [SPLITS[i % 3] for i in range(10)],
            "report_text": [template] * 8 + ["XXXX", "XXXX. XXXX."],
        }
    )
    dup = duplicate_reports(df)
    assert dup.n_cross_split == 0 and dup.n_templates == 1 and dup.n_texts == 1
    assert duplicate_reports(df, template_patients=10).n_cross_split == 1


def test_report_sections_count_when_report_text_is_empty() -> None:
    df = pd.DataFrame(
        {
            "patient_id": ["a", "b"],
            "split": ["train", "test"],
            "report_text": ["", ""],
            "report_findings": ["Small left effusion, new since prior.", "small left effusion,  new since prior."],
            "report_impression": ["Effusion.", "EFFUSION."],
        }
    )
    assert duplicate_reports(df).pairs == {"train/test": 1}


def test_patient_overlap_counts_each_split_pair() -> None:
    df = pd.DataFrame(
        {
            "patient_id": ["a", "a", "a", "b", "b", "c", ""],
            "split": ["train", "val", "test", "train", "train", "test", "val"],
        }
    )
    ov = patient_overlap(df)
    assert ov.patients == ["a"] and ov.pairs == {"train/val": 1, "train/test": 1, "val/test": 1}
    assert ov.n_patients == 3 and ov.rows == 3


def test_hamming_pairs_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, size=(300, 2), dtype=np.int64).astype(np.uint64)
    codes[7] = codes[100] ^ np.uint64(0b1011)
    codes[200, 0] = codes[5, 0]
    codes[200, 1] = codes[5, 1] ^ np.uint64(1 << 40)
    ii, jj, dd = hamming_pairs(codes, 60, max_elements=1000)  # many small chunks
    bits = np.unpackbits(codes.view(np.uint8), axis=1).astype(np.int32)
    full = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    want = {(i, j, full[i, j]) for i in range(300) for j in range(i + 1, 300) if full[i, j] <= 60}
    assert {(int(i), int(j), int(d)) for i, j, d in zip(ii, jj, dd)} == want
    assert (7, 100, 6) in want and (5, 200, 1) in want  # 3 bits flipped in each of two words; one bit


def test_unreadable_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    df = _clean_manifest().head(6)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    df.loc[5, "path"] = str(broken)
    images = ManifestImages(df, progress=False)
    audit = audit_leakage(df, images)
    assert images.unreadable == 1 and audit.images is not None and audit.images.n_unreadable == 1
    assert audit.images.n_images == 5 and str(broken) not in json.dumps(audit.to_dict())


def test_images_without_a_split_are_counted_not_compared() -> None:
    img = np.asarray(Image.open(_originals()[0]).convert("L"))
    dup = near_duplicate_images([("a", img), ("b", img), ("stranger", img)], {"a": "train", "b": "test"})
    assert dup.n_without_split == 1 and dup.n_cross_split == 1 and dup.cross_split[0].distance == 0
    assert dup.cross_split[0].correlation == pytest.approx(1.0, abs=1e-4)


#: Films of different children in the bundled sample that the previous detector (pHash <= 10, 32 x 32 rank
#: correlation >= 0.93) called near duplicates: the quickstart report's "3 near-duplicate image pairs across splits".
LOOKALIKE_PAIRS = (
    ("person870_bacteria_2792.jpeg", "person555_bacteria_2325.jpeg"),
    ("NORMAL2-IM-0822-0001.jpeg", "IM-0223-0001.jpeg"),
    ("NORMAL2-IM-0564-0001.jpeg", "NORMAL2-IM-0978-0001.jpeg"),
)


def test_bundled_kermany_sample_gives_no_cross_patient_near_duplicate_pair(tmp_path: Path) -> None:
    from medclip.data.manifest import read_manifest
    from medclip.recipes.kermany_pneumonia import sample_kermany_manifest

    sample_kermany_manifest(tmp_path / "sample.parquet")
    df = read_manifest(tmp_path / "sample.parquet")
    images = ManifestImages(df, progress=False)  # the audit's own path: preprocess_row at 128 px
    read = dict(images)
    assert images.read == len(df) == 360 and images.unreadable == 0
    ids = df["image_id"].astype(str).tolist()
    apart = {k: f"split{n}" for n, k in enumerate(ids)}  # every image in its own split: every pair is compared
    patients = dict(zip(ids, df["patient_id"].astype(str)))
    dup = near_duplicate_images(read.items(), apart, patients=patients)
    assert [p for p in dup.cross_split if p.same_patient is False] == [], dup.to_dict()
    assert dup.n_images == 360

    # the three look-alike pairs the quickstart report showed: close in pHash and at 32 x 32, apart in fine detail
    by_name = {Path(str(path)).name: str(k) for k, path in zip(df["image_id"], df["path"])}
    for a, b in LOOKALIKE_PAIRS:
        ia, ib = read[by_name[a]], read[by_name[b]]
        assert patients[by_name[a]] != patients[by_name[b]]
        distance = int(np.bitwise_count(image_hash(ia) ^ image_hash(ib))[0])
        assert distance <= DEFAULT_THRESHOLD, (a, b, distance)
        old = near_duplicate_images(
            [("a", ia), ("b", ib)], {"a": "train", "b": "test"}, min_correlation=0.93, min_fine_correlation=None
        )
        assert old.n_cross_split == 1, (a, b)  # the previous default's false pair
        fine = fine_correlation(fine_view(ia), fine_view(ib))
        assert fine < DEFAULT_MIN_FINE_CORRELATION - 0.05, (a, b, fine)
        assert near_duplicate_images([("a", ia), ("b", ib)], {"a": "train", "b": "test"}).n_cross_split == 0


def test_a_copy_cropped_shifted_and_rewindowed_keeps_its_fine_detail() -> None:
    src = Image.open(_originals()[7]).convert("L")
    a = np.asarray(src)
    crop = np.asarray(src.crop((8, 4, src.width - 4, src.height - 8)), dtype=np.float32) / 255.0
    lo, hi = np.percentile(crop, [5, 95])
    copy = (np.clip((crop - lo) / (hi - lo), 0, 1) ** 1.4 * 255 + 0.5).astype(np.uint8)
    assert fine_correlation(fine_view(a), fine_view(copy)) >= DEFAULT_MIN_FINE_CORRELATION + 0.05
    other = np.asarray(Image.open(_originals()[8]).convert("L"))
    assert fine_correlation(fine_view(a), fine_view(other)) < DEFAULT_MIN_FINE_CORRELATION
