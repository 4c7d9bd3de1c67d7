"""Study keys (keyed hashes, linkable across runs without identifiers) and PHI handling."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from ..paths import display_path

KEY_RELPATH = Path(".medvlm") / "study_key"

# DICOM keywords that identify a patient, a visit or a person; kept only with include_phi.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)

_UID_RE = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_QUOTED_RE = re.compile(r"'[^']*'|\"[^\"]*\"")


def load_or_create_key(out_dir: Path) -> bytes:
    """Return the secret for study keys, creating out_dir/.medvlm/study_key (0600) on first use."""
    path = Path(out_dir) / KEY_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if len(text) < 32:
        raise ValueError(f"study key file {path} is empty or too short; delete it to create a new one")
    return text.encode("ascii")


def keyed_hash(secret: bytes, value: str, n: int = 16) -> str:
    """hmac-sha256(secret, value) as n hex characters."""
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes (no UnicodeEncodeError)
    return hmac.new(secret, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:n]


def study_key(secret: bytes, study_uid: str) -> str:
    """Key for a DICOM study: keyed hash of its StudyInstanceUID."""
    return "s-" + keyed_hash(secret, study_uid)


def path_key(secret: bytes, relpath: str, prefix: str = "r-") -> str:
    """Key for a study (or an unreadable file) known only by its path relative to the batch root."""
    return prefix + keyed_hash(secret, relpath)


def scrub(text: str, limit: int = 300) -> str:
    """One line without quoted values or UIDs (warnings and errors may echo tag values)."""
    line = display_path(" ".join(str(text).split()))  # a non-UTF-8 file name echoed by a library: escaped
    line = _QUOTED_RE.sub("'…'", line)
    line = _UID_RE.sub("<uid>", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def phi_from_dataset(ds) -> dict[str, str]:
    """Identifiers present in a DICOM header, as strings (for --include-phi only)."""
    out: dict[str, str] = {}
    for kw in PHI_KEYWORDS:
        value = ds.get(kw)
        if value not in (None, ""):
            out[kw] = str(value)
    return out
