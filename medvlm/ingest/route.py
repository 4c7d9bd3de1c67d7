"""Modality routing: which prompt template (chest_xray, ct, mri) a study gets, and mismatch checks."""

from __future__ import annotations

from ..records import MODALITIES, Study, StudyContext

_CHEST_WORDS = ("CHEST", "THORAX", "THOR", "LUNG", "CXR", "PULM", "RIB")
_XRAY_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})


class UnsupportedModality(ValueError):
    """The study cannot be routed to any template; str() is a one-line reason."""


def _context(study_or_context: Study | StudyContext) -> StudyContext:
    return study_or_context.context if isinstance(study_or_context, Study) else study_or_context


def _is_chest(ctx: StudyContext) -> bool | None:
    """True/False when the body part or description says; None when nothing says."""
    texts = [t.upper() for t in (ctx.body_part, ctx.study_description) if t]
    if not texts:
        return None
    return any(w in t for t in texts for w in _CHEST_WORDS)


def infer_modality(ctx: StudyContext) -> str:
    """The template for a study from its DICOM Modality and body part; raise UnsupportedModality."""
    dicom = (ctx.dicom_modality or "").upper()
    if dicom in ("", "RASTER"):
        return "chest_xray"  # PNG/JPEG without a sidecar modality: the supported raster case
    if dicom == "CT":
        return "ct"
    if dicom == "MR":
        return "mri"
    if dicom in _XRAY_MODALITIES:
        chest = _is_chest(ctx)
        if chest is False:
            part = ctx.body_part or ctx.study_description or "non-chest"
            raise UnsupportedModality(f"unsupported study: {dicom} radiograph of {part.lower()} (only chest radiographs)")
        return "chest_xray"
    raise UnsupportedModality(f"unsupported modality {dicom} (supported: CR/DX chest, CT, MR)")


def resolve_modality(study_or_context: Study | StudyContext, requested: str) -> str:
    """Template name for a study: requested as is, or inferred for "auto" (raises UnsupportedModality)."""
    if requested == "auto":
        return infer_modality(_context(study_or_context))
    if requested not in MODALITIES:
        raise ValueError(f"unknown modality {requested!r} (choose auto, {', '.join(MODALITIES)})")
    return requested


def mismatch_reason(ctx: StudyContext, requested: str) -> str | None:
    """Why a study clearly does not fit the requested template (None when it fits or nothing says)."""
    if requested == "auto":
        return None
    dicom = (ctx.dicom_modality or "").upper()
    if dicom in ("", "RASTER"):
        return None  # a PNG says nothing about its modality; trust the user
    try:
        inferred = infer_modality(ctx)
    except UnsupportedModality as exc:
        return f"requested {requested} but {exc}"
    if inferred != requested:
        part = f" {ctx.body_part.lower()}" if ctx.body_part else ""
        return f"modality mismatch: study is {dicom}{part} ({inferred}) but {requested} was requested; use --force-modality to override"
    return None
