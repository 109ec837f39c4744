"""NIfTI-1/-2 (.nii, .nii.gz) reading via nibabel into the project's (D, H, W) volume order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medclip.deid import hash_identifier
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage, MultiVolumeError
from medclip.io.volume import canonical_volume
from medclip.io.windowing import WindowSpec, check_window, window_image

__all__ = ["read_nifti"]

PathLike = str | os.PathLike[str]

_ERRORS: tuple[type[BaseException], ...] = (
    nib.filebasedimages.ImageFileError,
    ValueError,
    TypeError,
    OSError,
    EOFError,
    IndexError,
    MemoryError,
)


@phi_safe
def read_nifti(
    path: PathLike, *, window: WindowSpec = "auto", volume_index: int | None = None, salt: str | None = None
) -> MedicalImage:
    """Read a NIfTI file as a (D, H, W) volume (or (H, W) image for a single-slice file).

    Orientation: nibabel's closest canonical RAS, axes reversed (see :mod:`medclip.io.volume`);
    spacing follows the affine (= header zooms after reorientation); values are the scaled data
    (``scl_slope``/``scl_inter`` applied). 4D files need ``volume_index`` (raises otherwise).
    NaN/inf voxels (common outside masks) are set to the minimum finite value and counted in
    ``metadata['nonfinite_voxels']``. Header text fields (descrip, aux_file, db_name) are never read.
    """
    check_window(window)
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except _ERRORS as exc:
        raise ImageReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, nib.Nifti1Pair) or isinstance(image, nib.Cifti2Image):  # Nifti1/2 image or .hdr/.img pair
        raise ImageReadError(path, f"not a NIfTI image ({type(image).__name__})")

    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise ImageReadError(path, f"NIfTI with shape {shape} is not an image")
    # Trailing singleton dimensions (x, y, z, 1, 1) are dropped; a 4th axis > 1 is time/volumes.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    n_volumes = 1
    try:
        dataobj = image.dataobj
        if len(shape) == 4:
            n_volumes = shape[3]
            if volume_index is None:
                raise MultiVolumeError(
                    path,
                    f"4D NIfTI with {n_volumes} volumes; choose one with volume_index/frame 0..{n_volumes - 1}",
                    n_volumes,
                )
            if not 0 <= volume_index < n_volumes:
                raise ImageReadError(path, f"volume_index {volume_index} out of range: {n_volumes} volume(s)")
            data = np.asarray(dataobj[..., volume_index].reshape(shape[:3]), dtype=np.float32)
        elif len(shape) > 4:
            raise ImageReadError(path, f"{len(shape)}D NIfTI (shape {shape}) is not supported")
        else:
            if volume_index not in (None, 0):
                raise ImageReadError(path, f"volume_index {volume_index} out of range: 1 volume")
            data = np.asarray(dataobj, dtype=np.float32).reshape(shape)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(path, f"the image file of this .hdr/.img pair is missing ({exc.filename})") from None
    except _ERRORS as exc:
        raise ImageReadError(path, f"voxel data unreadable, truncated? ({type(exc).__name__}: {exc})") from exc

    if data.ndim == 2:
        data = data[:, :, None]
    nonfinite = ~np.isfinite(data)
    n_nonfinite = int(nonfinite.sum())
    if n_nonfinite:
        if n_nonfinite == data.size:
            raise ImageReadError(path, "every voxel is NaN or infinite")
        data[nonfinite] = float(data[~nonfinite].min())
    if data.min() == data.max():
        raise ImageReadError(path, f"constant image: every voxel is {float(data.min()):g}")

    array, affine, spacing = canonical_volume(data, image.affine)
    array = np.ascontiguousarray(array)
    try:
        array, used = window_image(array, window)
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from exc

    header = image.header
    metadata: dict[str, Any] = {
        "format": "nifti",
        "modality": "",
        "view_position": "",
        "body_part": "",
        "photometric": "MONOCHROME2",
        "rows": int(array.shape[-2]),
        "columns": int(array.shape[-1]),
        "frames": int(array.shape[0]),
        "bits_stored": int(header.get_data_dtype().itemsize * 8),
        "volumes": n_volumes,
        "volume_index": volume_index if volume_index is not None else 0,
        "pixel_spacing": [float(spacing[1]), float(spacing[2])],
        "datatype": str(header.get_data_dtype()),
        "image_id": hash_identifier(str(Path(path).resolve()), salt),
        "nonfinite_voxels": n_nonfinite,
        "file_window_center": None,
        "file_window_width": None,
    }
    metadata.update(used)
    if array.shape[0] == 1:  # a single slice: return it as a 2D image (H, W)
        affine_2d = affine @ np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
        return MedicalImage(array=array[0], spacing=spacing[1:], affine=affine_2d, metadata=metadata, source=str(path))
    return MedicalImage(array=array, spacing=spacing, affine=affine, metadata=metadata, source=str(path))
