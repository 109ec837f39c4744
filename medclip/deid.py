"""De-identification: salted hashing of identifiers and the DICOM tags that must never leave a reader.

One place for every PHI rule, used by the image readers, the indexer, the cache and the demo.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: Environment variable that holds the project salt. Set it once per site and keep it secret:
#: without the salt a hashed identifier cannot be linked back to the patient.
SALT_ENV = "MEDCLIP_SALT"

#: Salt used when none is given: fine for tests and demos, never for a real export.
DEFAULT_SALT = "medclip-default-salt-change-me"

#: DICOM keywords that identify a person, a visit or a place and are dropped outright.
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "MilitaryRank",
        "BranchOfService",
        "MedicalRecordLocator",
        "EthnicGroup",
        "Occupation",
        "AdditionalPatientHistory",
        "PatientComments",
        "PatientInsurancePlanCodeSequence",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyID",
        "AdmissionID",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "AcquisitionDateTime",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepID",
        "RequestAttributesSequence",
        "ImageComments",
        "StudyComments",
        "RETIRED_StudyComments",
        "PatientSize",
        "PatientWeight",
        "CountryOfResidence",
        "RegionOfResidence",
        "CurrentPatientLocation",
        "PatientState",
        "InsurancePlanIdentification",
    }
)

#: Staff person-name tags (referring, performing, reading, operators, ...): their values are scrubbed from
#: report text like the patient's own name. :func:`person_names` also finds any other PN-valued element.
STAFF_NAME_KEYWORDS: tuple[str, ...] = (
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "ConsultingPhysicianName",
    "VerifyingObserverName",
    "PersonName",
    "ReviewerName",
    "ContentCreatorName",
)

#: DICOM identifiers that are kept only as salted hashes (they link rows, never leak).
HASHED_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
    "FrameOfReferenceUID",
)


def get_salt(salt: str | None = None) -> str:
    """The salt to hash with: the argument, else ``$MEDCLIP_SALT``, else the (insecure) default."""
    if salt:
        return salt
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


_warned_default_salt = False

#: What a user sees (once per process) when a real run hashes with the public default salt.
DEFAULT_SALT_WARNING = (
    "identifiers are hashed with the PUBLIC default salt: anyone can recover patient IDs and folder names "
    f"from the hashes by guessing. Set a secret salt with --salt or ${SALT_ENV} (keep it constant per site)"
)


def is_default_salt(salt: str | None = None) -> bool:
    """True when hashing would use the public :data:`DEFAULT_SALT` (no argument and no ``$MEDCLIP_SALT``)."""
    return get_salt(salt) == DEFAULT_SALT


def warn_if_default_salt(salt: str | None = None) -> bool:
    """Log :data:`DEFAULT_SALT_WARNING` (once per process) when ``salt`` resolves to the public default.

    Returns True when the default salt is in use, whether or not the warning was logged this time.
    Call it where a real export is processed (indexing, recipes), not in the demo or quick start.
    """
    global _warned_default_salt
    if not is_default_salt(salt):
        return False
    if not _warned_default_salt:
        _warned_default_salt = True
        log.warning(DEFAULT_SALT_WARNING)
    return True


def hash_identifier(value: object, salt: str | None = None, *, length: int = 16) -> str:
    """Salted, keyed hash (HMAC-SHA256, hex) of an identifier; empty input gives ``""``."""
    text = "" if value is None else str(value).strip()
    if not text:
        return ""
    digest = hmac.new(get_salt(salt).encode(), text.encode("utf-8", "replace"), hashlib.sha256)
    return digest.hexdigest()[:length]


# Per-frame / shared functional groups (one item per frame, thousands in enhanced CT/MR) hold geometry, not people.
_NO_PERSON_SEQUENCES = frozenset({0x52009230, 0x52009229})


def person_names(ds: Dataset, *, max_depth: int = 8) -> list[str]:
    """Every person-name (VR ``PN``) value in a pydicom dataset, nested sequences included.

    Covers the patient's names and every staff name tag (:data:`STAFF_NAME_KEYWORDS` and any other PN
    element, e.g. observer names inside a structured report). Deferred values (pixel data) are never read.
    """
    from pydicom.datadict import dictionary_VR

    out: list[str] = []

    def walk(dataset: Dataset, depth: int) -> None:
        for tag in list(dataset.keys()):
            try:
                raw = dataset.get_item(tag, keep_deferred=True)
                vr = getattr(raw, "VR", None)
                if vr is None:
                    vr = dictionary_VR(tag)
            except (KeyError, ValueError, TypeError, AttributeError):
                continue
            if vr not in ("PN", "SQ"):
                continue
            try:
                value = dataset[tag].value
            except Exception:  # a malformed element must not stop de-identification of the others
                continue
            if vr == "SQ":
                if depth < max_depth and tag not in _NO_PERSON_SEQUENCES:
                    for item in value or []:
                        walk(item, depth + 1)
                continue
            items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
            out.extend(str(v).strip() for v in items if v is not None and str(v).strip())

    walk(ds, 0)
    return out


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def coarse_age(age: object) -> str:
    """Age as a coarse band ('40-49', '90+'), from years or a DICOM age string ('048Y', '006M')."""
    if age is None:
        return ""
    text = str(age).strip()
    if not text or text.lower() in {"nan", "none"}:
        return ""
    m = _AGE_RE.match(text)
    if m is None:
        try:
            years = float(text)
        except ValueError:
            return ""
    else:
        n, unit = int(m.group(1)), (m.group(2) or "Y").upper()
        years = {"D": n / 365.25, "W": n / 52.18, "M": n / 12.0, "Y": float(n)}[unit]
    if years < 0 or years > 150:
        return ""
    if years >= 90:
        return "90+"
    if years < 1:
        return "0"
    lo = int(years // 10) * 10
    return f"{lo}-{lo + 9}"


def coarse_sex(sex: object) -> str:
    """'M', 'F', 'O' or '' from any common spelling."""
    text = str(sex or "").strip().upper()[:1]
    return text if text in {"M", "F", "O"} else ""
