"""The one image type every reader returns, and the one error every reader raises."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImageReadError", "MedicalImage", "MultiVolumeError"]


def _without_path(reason: str, path: str) -> str:
    """``reason`` with the file's path and name replaced by ``<file>``: a reason may be logged, the path may not.

    Readers' own exception texts sometimes repeat the path (Pillow, nibabel); the error's message still
    names the file for the person who asked to read it.
    """
    variants = {path, os.path.basename(path)}
    try:
        variants |= {os.path.abspath(path), os.path.realpath(path)}
    except (OSError, ValueError):
        pass
    for variant in sorted((v for v in variants if len(v) >= 4), key=len, reverse=True):
        reason = reason.replace(variant, "<file>")
    return reason


class ImageReadError(ValueError):
    """An input that cannot be turned into a :class:`MedicalImage`; names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        self.reason = _without_path(str(reason), self.path)
        super().__init__(f"cannot read image {self.path!r}: {self.reason}")

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        # Keeps the error picklable across DataLoader / multiprocessing workers.
        return (type(self), (self.path, self.reason))


class MultiVolumeError(ImageReadError):
    """4D input (fMRI, perfusion, multi-phase, a series of Siemens mosaics) read without choosing a volume.

    ``n_volumes`` says how many volumes there are; read one with ``volume_index``/``frame`` 0..n_volumes-1.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, n_volumes: int) -> None:
        super().__init__(path, reason)
        self.n_volumes = int(n_volumes)

    def __reduce__(self) -> tuple[type[MultiVolumeError], tuple[str, str, int]]:  # type: ignore[override]
        return (type(self), (self.path, self.reason, self.n_volumes))


@dataclass(eq=False)  # arrays make field-wise == ambiguous; compare .array explicitly
class MedicalImage:
    """A decoded 2D image (H, W) or volume (D, H, W) with its geometry and non-PHI metadata.

    ``array`` is float32. Windowed images lie in [0, 1] (MONOCHROME1 already inverted); images read
    with ``window=None`` keep modality values (HU for CT). ``spacing`` is mm per array axis, in the
    array's axis order. ``affine`` maps voxel indices (in array axis order) to RAS+ world mm, or is
    None when the source has no patient geometry. Volumes are stored in the project's one axis
    order: ``D`` runs inferior->superior, ``H`` posterior->anterior, ``W`` left->right (that is,
    nibabel's closest canonical RAS array with its axes reversed).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: a DICOM VOI LUT (modality values -> [0, 1]) kept by images read with ``window=None``, so that a later
    #: ``window="auto"`` gives what reading with "auto" gives; a table only, never written anywhere
    voi_lut: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.dtype != np.float32:
            self.array = self.array.astype(np.float32)
        if self.array.ndim not in (2, 3):
            raise ValueError(f"MedicalImage array must be 2D (H, W) or 3D (D, H, W), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != self.array.ndim:
            raise ValueError(f"spacing {self.spacing} does not match array shape {self.array.shape}")
        if self.affine is not None:
            self.affine = np.asarray(self.affine, dtype=np.float64)
            if self.affine.shape != (4, 4):
                raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        self.source = str(self.source)

    def __repr__(self) -> str:
        return (
            f"MedicalImage(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"modality={self.metadata.get('modality', '')!r}, window={self.metadata.get('window')!r}, "
            f"source={self.source!r})"
        )

    @property
    def is_volume(self) -> bool:
        """True for a (D, H, W) volume, False for a 2D image."""
        return self.array.ndim == 3

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the pixel array."""
        return tuple(self.array.shape)
