"""Imaging I/O: every supported input (DICOM file or series, NIfTI, PNG/JPEG) becomes one :class:`MedicalImage`.

>>> from medclip.io import load_image
>>> image = load_image("chest.dcm")               # windowed to [0, 1], MONOCHROME1 inverted
>>> ct = load_image("ct_series/", window=None)    # (D, H, W) volume in HU, RAS affine
"""

from medclip.io.dicom import find_dicom_series, is_dicom_file, read_dicom, read_dicom_series, safe_metadata
from medclip.io.guard import guard_pydicom_logger, phi_safe, phi_safe_reading
from medclip.io.image import ImageReadError, MedicalImage, MultiVolumeError
from medclip.io.loader import detect_format, load_image
from medclip.io.nifti import read_nifti
from medclip.io.raster import read_raster
from medclip.io.volume import resample_volume
from medclip.io.windowing import WINDOW_PRESETS, apply_window, to_model_input

guard_pydicom_logger()  # pydicom log records name files and values: sanitised, never passed on raw

__all__ = [
    "WINDOW_PRESETS",
    "ImageReadError",
    "MedicalImage",
    "MultiVolumeError",
    "apply_window",
    "detect_format",
    "find_dicom_series",
    "is_dicom_file",
    "load_image",
    "phi_safe",
    "phi_safe_reading",
    "read_dicom",
    "read_dicom_series",
    "read_nifti",
    "read_raster",
    "resample_volume",
    "safe_metadata",
    "to_model_input",
]
