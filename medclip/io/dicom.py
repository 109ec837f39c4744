"""DICOM reading: one file (2D or multi-frame) or a series of files into a :class:`MedicalImage`.

The public DICOM names of :mod:`medclip.io`, defined in modules split by job:

- :mod:`~medclip.io.dicom_open`: detection by content, opening (``.dcm.gz`` inflated in memory, bare
  datasets without preamble or file meta);
- :mod:`~medclip.io.dicom_header`: header values read defensively, non-PHI metadata (:func:`safe_metadata`);
- :mod:`~medclip.io.dicom_limits`: hostile-input limits checked before decoding (size caps, encapsulated
  frame headers against Rows x Columns, the gzip inflation cap);
- :mod:`~medclip.io.dicom_codecs`: pixel decoding (pydicom's plugins in process, GDCM only in the worker
  process of :mod:`medclip.io.gdcm_worker`);
- :mod:`~medclip.io.dicom_pixels`: stored values -> luminance, modality LUT / rescale, VOI LUT / window;
- :mod:`~medclip.io.dicom_geometry`: slices and frames in patient space, stacks and their affine, mosaics;
- :mod:`~medclip.io.dicom_read`: one file (:func:`read_dicom`);
- :mod:`~medclip.io.dicom_series`: a series of files (:func:`read_dicom_series`, :func:`find_dicom_series`,
  grouping of anonymised series).

Metadata never carries PHI: identifiers are salted hashes (:func:`medclip.deid.hash_identifier`),
names, dates and free text are never read into it.
"""

from medclip.io.dicom_header import safe_metadata
from medclip.io.dicom_limits import MAX_DECODED_SAMPLES, MAX_FRAME_PIXELS, MAX_GZIP_DICOM_BYTES
from medclip.io.dicom_open import dicom_source, is_dicom_file
from medclip.io.dicom_pixels import UNUSABLE_MODALITY_LUT, VoiLut
from medclip.io.dicom_read import read_dicom
from medclip.io.dicom_series import (
    INFERRED_GROUPING,
    find_dicom_series,
    inferred_run_ids,
    inferred_series_key,
    read_dicom_series,
    slice_position,
    split_position_runs,
)

__all__ = [
    "INFERRED_GROUPING",
    "MAX_DECODED_SAMPLES",
    "MAX_FRAME_PIXELS",
    "MAX_GZIP_DICOM_BYTES",
    "UNUSABLE_MODALITY_LUT",
    "VoiLut",
    "dicom_source",
    "find_dicom_series",
    "inferred_run_ids",
    "inferred_series_key",
    "is_dicom_file",
    "read_dicom",
    "read_dicom_series",
    "safe_metadata",
    "slice_position",
    "split_position_runs",
]
