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


def assign_splits(
    patient_ids: pd.Series, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> pd.Series:
    """Split label per row, constant within each patient."""
    unique = {p: assign_split(str(p), fractions, seed) for p in pd.unique(patient_ids)}
    return patient_ids.map(unique)


def patients_in_several_splits(
    df: pd.DataFrame, patient_col: str = "patient_id", split_col: str = "split"
) -> list[str]:
    """Patients (hashed ids) whose rows fall in more than one split: leakage."""
    if df.empty or split_col not in df or patient_col not in df:
        return []
    n = df.groupby(patient_col)[split_col].nunique()
    return sorted(n[n > 1].index.astype(str))
