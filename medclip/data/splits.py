"""Patient-level train/val/test splits, stable under re-indexing."""

from __future__ import annotations

import hashlib

import pandas as pd

SPLITS = ("train", "val", "test")


def validate_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Check that (train, val, test) fractions are non-negative and sum to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def assign_split(patient_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """The split of one patient: a uniform draw from a hash of (seed, patient), so adding patients never moves others."""
    train, val, _ = validate_fractions(fractions)
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def linked_patients(patient_ids: pd.Series, image_ids: pd.Series) -> dict[str, str]:
    """Each patient's group representative: patients listed with one image (the same ``image_id`` under several
    patient ids, as covid-chestxray's metadata has) are joined, transitively (union-find over the connected
    components); the representative is the group's smallest patient id (as a string)."""
    if len(patient_ids) != len(image_ids):
        raise ValueError(f"patient_ids and image_ids differ in length ({len(patient_ids)} vs {len(image_ids)})")
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        root = p
        while parent[root] != root:
            root = parent[root]
        while parent[p] != root:  # path compression
            parent[p], p = root, parent[p]
        return root

    first_patient: dict[str, str] = {}
    for patient, image in zip(patient_ids.astype(str), image_ids, strict=True):
        parent.setdefault(patient, patient)
        if image is None or (isinstance(image, float) and image != image):  # no image id: links nothing
            continue
        other = first_patient.setdefault(str(image), patient)
        a, b = find(patient), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smaller id stays the root: the root is the group's minimum
    return {p: find(p) for p in parent}


def assign_splits(
    patient_ids: pd.Series,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    image_ids: pd.Series | None = None,
) -> pd.Series:
    """Split label per row, constant within each patient.

    With ``image_ids`` (one per row), patients that share an image are one group and the whole group takes the
    split of its smallest patient id, so an image listed under two patients never spans two splits; a patient
    who shares no image keeps exactly the split it has without ``image_ids``.
    """
    if image_ids is None:
        unique = {p: assign_split(str(p), fractions, seed) for p in pd.unique(patient_ids)}
        return patient_ids.map(unique)
    root = linked_patients(patient_ids, pd.Series(list(image_ids), index=patient_ids.index))
    draws = {r: assign_split(r, fractions, seed) for r in sorted(set(root.values()))}
    return patient_ids.map(lambda p: draws[root[str(p)]])


def patients_in_several_splits(
    df: pd.DataFrame, patient_col: str = "patient_id", split_col: str = "split"
) -> list[str]:
    """Patients (hashed ids) whose rows fall in more than one split: leakage."""
    if df.empty or split_col not in df or patient_col not in df:
        return []
    n = df.groupby(patient_col)[split_col].nunique()
    return sorted(n[n > 1].index.astype(str))
