"""Patients linked by a shared image stay in one split (covid-chestxray lists a few images under two patients)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medclip.data.splits import assign_split, assign_splits, linked_patients

FRACTIONS = (0.6, 0.1, 0.3)


def _two_patients_in_different_splits(seed: int = 0) -> tuple[str, str]:
    seen: dict[str, str] = {}
    for i in range(100):
        p = f"p{i:03d}"
        split = assign_split(p, FRACTIONS, seed)
        for q, s in seen.items():
            if s != split:
                return q, p
        seen[p] = split
    raise AssertionError("no two patients in different splits")


def test_shared_image_puts_both_patients_in_the_split_of_the_smallest_id():
    a, b = _two_patients_in_different_splits()
    assert assign_split(a, FRACTIONS) != assign_split(b, FRACTIONS)
    others = [f"z{i}" for i in range(20)]
    patients = pd.Series([a, a, b, b, *others])
    images = pd.Series(["img-a", "shared", "shared", "img-b", *(f"img-{o}" for o in others)])
    split = assign_splits(patients, FRACTIONS, image_ids=images)
    assert split.iloc[:4].nunique() == 1
    assert split.iloc[0] == assign_split(min(a, b), FRACTIONS)
    # patients that share nothing keep exactly their unlinked split
    assert (split.iloc[4:] == assign_splits(pd.Series(others), FRACTIONS).to_numpy()).all()
    assert (assign_splits(pd.Series(others), FRACTIONS) == [assign_split(o, FRACTIONS) for o in others]).all()


def test_links_are_transitive_and_the_root_is_the_smallest_id():
    patients = pd.Series(["c", "b", "b", "a", "d"])
    images = pd.Series(["x", "x", "y", "y", "z"])
    roots = linked_patients(patients, images)
    assert roots == {"a": "a", "b": "a", "c": "a", "d": "d"}
    split = assign_splits(patients, FRACTIONS, seed=3, image_ids=images)
    assert split.iloc[:4].nunique() == 1 and split.iloc[0] == assign_split("a", FRACTIONS, 3)
    assert split.iloc[4] == assign_split("d", FRACTIONS, 3)


def test_without_image_ids_nothing_changes():
    patients = pd.Series(["p1", "p2", "p1", "p3"])
    assert (assign_splits(patients, FRACTIONS, 1) == [assign_split(p, FRACTIONS, 1) for p in patients]).all()
    with pytest.raises(ValueError, match="differ in length"):
        linked_patients(patients, pd.Series(["a"]))


def test_manifest_from_records_keeps_a_shared_image_in_one_split(tmp_path: Path):
    from medclip.data.manifest import manifest_from_records

    a, b = _two_patients_in_different_splits()
    for name in ("one.png", "two.png", "three.png"):
        (tmp_path / name).write_bytes(b"x")
    records = pd.DataFrame({"path": ["one.png", "two.png", "two.png", "three.png"], "patient": [a, a, b, b]})
    df, _ = manifest_from_records(records, tmp_path, salt="s", fractions=FRACTIONS, seed=0, require_files=True)
    assert df["split"].nunique() == 1


def test_covid_recipe_no_image_spans_two_splits(shared_dir: Path):
    from medclip.data.manifest import manifest_from_records
    from medclip.recipes import covid_chestxray

    root = shared_dir / "data" / "covid_cxr"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"covid-chestxray not found at {root}")
    records = covid_chestxray.records(root)
    df, _ = manifest_from_records(records, root, salt="linked-test", fractions=FRACTIONS, seed=0)
    per_image = df.groupby("image_id")["patient_id"].nunique()
    assert (per_image > 1).any()  # the data does list images under two patients
    assert (df.groupby("image_id")["split"].nunique() == 1).all()
    # and every patient still sits in one split
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
