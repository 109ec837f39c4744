"""PNG / JPEG (and other Pillow formats such as TIFF, BMP) into a 2D :class:`MedicalImage`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medclip.deid import hash_identifier
from medclip.io.guard import phi_safe
from medclip.io.image import ImageReadError, MedicalImage
from medclip.io.windowing import WindowSpec, check_window, window_image

__all__ = ["read_raster"]

PathLike = str | os.PathLike[str]

# Pillow modes that hold one grayscale channel of more than 8 bits.
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@phi_safe
def read_raster(path: PathLike, *, window: WindowSpec = "auto", salt: str | None = None) -> MedicalImage:
    """Read a PNG/JPEG (8- or 16-bit, gray or colour) as a 2D grayscale image.

    EXIF orientation is applied; colour becomes luminance (ITU-R BT.601); alpha is ignored.
    "auto" window: 8-bit data are already display values (x / 255); 16-bit and float data get the
    robust percentile window (their useful range is rarely the full 0..65535). ``window=None``
    returns the stored values. Spacing is unknown for photos and reported as (1.0, 1.0).
    """
    check_window(window)
    try:
        with Image.open(path) as opened:
            fmt = (opened.format or "").lower()
            img: Image.Image = ImageOps.exif_transpose(opened)
            img.load()
            mode = img.mode
            if mode in _HIGH_BIT_MODES:
                values = np.asarray(img, dtype=np.float32)
                display_range = None
            else:
                if mode not in ("L", "1"):
                    img = img.convert("L")  # luminance: L = R*299/1000 + G*587/1000 + B*114/1000
                values = np.asarray(img, dtype=np.float32)
                if mode == "1":
                    values *= 255.0
                display_range = (0.0, 255.0)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc

    if values.ndim != 2:
        raise ImageReadError(path, f"unexpected decoded shape {values.shape}")
    if not np.isfinite(values).all():
        raise ImageReadError(path, "pixel data contain NaN or infinite values")
    if values.min() == values.max():
        raise ImageReadError(path, f"constant image: every pixel is {float(values.min()):g}")
    try:
        array, used = window_image(values, window, display_range=display_range)
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from exc
    metadata: dict[str, Any] = {
        "format": fmt,
        "modality": "",
        "view_position": "",
        "body_part": "",
        "photometric": "MONOCHROME2",
        "rows": int(values.shape[0]),
        "columns": int(values.shape[1]),
        "frames": 1,
        "bits_stored": 8 if display_range else (16 if mode.startswith("I;16") else 32),
        "pixel_spacing": None,  # photos carry no calibrated spacing; spacing is reported as 1.0
        "pixel_mode": mode,
        "image_id": hash_identifier(str(Path(path).resolve()), salt),
        "file_window_center": None,
        "file_window_width": None,
        "display_range": list(display_range) if display_range else None,
    }
    metadata.update(used)
    return MedicalImage(array=array, spacing=(1.0, 1.0), affine=None, metadata=metadata, source=str(path))
