"""DICOM headers read once per run: the compact HeaderSummary discovery hands to load_study, and the
clinical context (age, sex, view, indication...) taken from it.

Discovery reads every file's header anyway (to group files by StudyInstanceUID); it keeps what
loading needs in a HeaderSummary inside the StudyRef, so load_study reads a header again only when
the summary is missing (a StudyRef made elsewhere) or the file changed since. Identifiers are never
kept in a summary: the age is computed from the birth date here and the birth date dropped; series
are grouped by an opaque token, not the SeriesInstanceUID. (--include-phi reads the identifiers of
one file per study at load time.)
"""

from __future__ import annotations

import hashlib
import numbers
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from ..records import StudyContext
from .capture import captured, dedupe
from .read import header_problem, non_image_reason, read_dataset, transfer_syntax
from .types import HeaderSummary, IngestError

LATERAL = frozenset({"LL", "RL", "LAT", "LATERAL", "L", "LLD", "RLD"})

# Header elements load_study uses: context, view, series choice and order, rendering mode, size.
SUMMARY_KEYWORDS: tuple[str, ...] = (
    "Modality", "BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName",
    "ViewPosition", "PatientSex", "ReasonForStudy", "ReasonForTheRequestedProcedure",
    "RequestedProcedureDescription", "ImageType", "NumberOfFrames", "ImageOrientationPatient",
    "ImagePositionPatient", "InstanceNumber", "Rows", "Columns", "PhotometricInterpretation",
    "SamplesPerPixel",
)
_SUMMARY_TAGS = tuple((keyword, Tag(tag_for_keyword(keyword))) for keyword in SUMMARY_KEYWORDS)


def read_header(path: Path) -> tuple[HeaderSummary, Dataset]:
    """Read one file's header and summarise it; raise IngestError for unreadable or truncated headers."""
    notes: list[str] = []
    with captured(notes):  # values are converted lazily: summarising may warn too
        ds = read_dataset(path, header_only=True, notes=notes)
        broken = header_problem(ds)
        if broken:
            raise IngestError(broken)
        st = path.stat()
        summary = summarize(ds, str(path), (st.st_size, st.st_mtime_ns), notes)
    return summary, ds


def summarize(ds: Dataset, path: str, stamp: tuple[int, int], notes: list[str]) -> HeaderSummary:
    """The HeaderSummary of a header read from path (notes: remarks made while reading it)."""
    values = []
    for keyword, tag in _SUMMARY_TAGS:
        try:
            value = _plain(ds[tag].value)
        except KeyError:
            continue
        except Exception:  # an unconvertible value counts as absent, as a failed lookup would
            continue
        if value is not _SKIP:
            values.append(_shared((keyword, value)))
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    return HeaderSummary(
        path=path,
        stamp=stamp,
        values=_shared(tuple(values)),
        transfer_syntax=_shared(transfer_syntax(ds)),
        non_image=non_image_reason(ds),
        age_years=age_of(ds),
        series=_shared(hashlib.sha256(series_uid.encode()).hexdigest()[:16]) if series_uid else None,
        notes=tuple(dedupe(notes)),
    )


_SKIP = object()
_SHARED: dict = {}


def _shared(value):
    """One object per equal value: pickle stores an object once, so the many files of a series that
    share header values (modality, descriptions, orientation...) cost little inside one StudyRef."""
    if len(_SHARED) > 100_000:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


class Values(tuple):
    """A multi-valued element: a tuple that prints like pydicom's MultiValue (as a list)."""

    def __str__(self) -> str:
        return str(list(self))


def _plain(value: Any) -> Any:
    """A pydicom element value as plain Python (str, int, float, Values of them); _SKIP for others."""
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_plain(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else Values(items)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (numbers.Real, Decimal)):
        return float(value)
    return _SKIP  # sequences, bytes, person names: nothing load_study reads


def age_of(header) -> int | None:
    """Age in whole years: PatientAge, else from PatientBirthDate and the study (series, ...) date."""
    age = parse_age(header.get("PatientAge"))
    if age is None:
        when = header.get("StudyDate") or header.get("SeriesDate") or header.get("AcquisitionDate") or header.get("ContentDate")
        age = age_from_dates(header.get("PatientBirthDate"), when)
    return age


# ---------------------------------------------------------------- context


def parse_age(value: str | None) -> int | None:
    """DICOM AS ("063Y", "006M", "010W", "003D") or a plain number -> whole years."""
    if value in (None, ""):
        return None
    text = str(value).strip().upper()
    unit = text[-1] if text and text[-1] in "YMWD" else "Y"
    digits = text[:-1] if text and text[-1] in "YMWD" else text
    try:
        n = float(digits)
    except ValueError:
        return None
    years = {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[unit]
    return int(years) if 0 <= years < 130 else None


def _parse_da(value) -> date | None:
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def age_from_dates(birth, when) -> int | None:
    b, w = _parse_da(birth), _parse_da(when)
    if not b or not w or w < b:
        return None
    years = w.year - b.year - ((w.month, w.day) < (b.month, b.day))
    return years if years < 130 else None


def parse_sex(value) -> str | None:
    text = str(value or "").strip().upper()
    if text in ("M", "MALE", "MAN"):
        return "M"
    if text in ("F", "FEMALE", "WOMAN"):
        return "F"
    if text in ("O", "OTHER"):
        return "O"
    return None


def view_of(header) -> str | None:
    """ViewPosition normalised (PA, AP, LAT...), else a view word in the series description."""
    raw = str(header.get("ViewPosition", "") or "").strip().upper()
    if raw:
        return "LAT" if raw in LATERAL else raw
    text = " ".join(str(header.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).upper()
    words = set(text.replace("_", " ").replace("/", " ").split())
    for w in ("PA", "AP"):
        if w in words:
            return w
    if words & {"LAT", "LATERAL", "LL", "RL"}:
        return "LAT"
    return None


def header_text(header, *keys: str) -> str | None:
    """The first non-empty of keys, whitespace collapsed."""
    for k in keys:
        v = header.get(k)
        if v not in (None, ""):
            t = " ".join(str(v).split())
            if t:
                return t
    return None


def context_from(header: HeaderSummary, view: str | None) -> StudyContext:
    """The prompt context of a study from its first image header (no identifiers)."""
    body = header_text(header, "BodyPartExamined")
    return StudyContext(
        age_years=header.age_years,
        sex=parse_sex(header.get("PatientSex")),
        view=view,
        indication=header_text(header, "ReasonForStudy", "ReasonForTheRequestedProcedure", "RequestedProcedureDescription"),
        body_part=body.upper() if body else None,
        study_description=header_text(header, "StudyDescription"),
        dicom_modality=header_text(header, "Modality"),
    )
