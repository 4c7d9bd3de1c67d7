"""load_study: decode a discovered study into a Study (images + context), or a StudyError.

Image choice:
- chest_xray: one image per file; the first frontal view (PA, then AP, then other non-lateral),
  then, when max_images >= 2, the first lateral (LL, RL, LAT). Without any view information the
  first max_images files are used. Other files are listed in Study.notes, never silently dropped.
- ct / mri: files are grouped by SeriesInstanceUID; series are ranked (ORIGINAL before DERIVED,
  localizers/scouts last, CT axial first, then more slices first) and the top max_images series
  each become one montage of evenly spaced slices (see dicom.py). A series made of several
  multi-frame files uses the file with the most frames.
- PNG/JPEG studies: the raster file itself; context from its CSV/JSON sidecar.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset

from ..records import ImageInput, Study, StudyContext, StudyError, StudyRef
from .dicom import (
    MAX_TILES,
    IngestError,
    Rendered,
    Slice,
    frame_count,
    header_problem,
    non_image_reason,
    read_dataset,
    render_slices,
    sort_slices,
    transfer_syntax,
)
from .discover import relpath
from .privacy import phi_from_dataset, scrub
from .raster import is_raster, render_raster, sidecar_for
from .route import UnsupportedModality, mismatch_reason, resolve_modality

FRONTAL = ("PA", "AP")
LATERAL = frozenset({"LL", "RL", "LAT", "LATERAL", "L", "LLD", "RLD"})
_MAX_NOTES = 20


def load_study(
    ref: StudyRef,
    modality: str,
    *,
    max_images: int = 2,
    force_modality: bool = False,
    include_phi: bool = False,
    root: Path | None = None,
) -> Study | StudyError:
    """Decode ref's files into a Study; bad input becomes a StudyError (never an exception)."""
    try:
        root = Path(root).resolve() if root is not None else _infer_root(ref)
        dicom_files = [Path(f) for f in ref.files if not is_raster(Path(f))]
        raster_files = [Path(f) for f in ref.files if is_raster(Path(f))]
        if dicom_files:
            return _load_dicom(ref, dicom_files, raster_files, root, modality, max(1, max_images), force_modality, include_phi)
        if raster_files:
            return _load_raster(ref, raster_files, root, modality, max(1, max_images), force_modality)
        return StudyError(ref=ref, stage="ingest", reason="study has no files")
    except IngestError as exc:
        return StudyError(ref=ref, stage="ingest", reason=str(exc))
    except UnsupportedModality as exc:
        return StudyError(ref=ref, stage="ingest", reason=str(exc), status="skipped")
    except Exception as exc:  # last line of defence: one line, the batch goes on
        return StudyError(ref=ref, stage="ingest", reason=f"unexpected {type(exc).__name__}: {scrub(str(exc), 200)}")


def _infer_root(ref: StudyRef) -> Path:
    """The batch root, from the first absolute file path and the study's relative source."""
    first = Path(ref.files[0])
    src = Path(ref.source)
    if src.parts:
        for anc in first.parents:
            target = anc / src
            if target == first or target in first.parents:
                return anc
    return first.parent


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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


def view_of(ds: Dataset) -> str | None:
    """ViewPosition normalised (PA, AP, LAT...), else a view word in the series description."""
    raw = str(ds.get("ViewPosition", "") or "").strip().upper()
    if raw:
        return "LAT" if raw in LATERAL else raw
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).upper()
    words = set(text.replace("_", " ").replace("/", " ").split())
    for w in ("PA", "AP"):
        if w in words:
            return w
    if words & {"LAT", "LATERAL", "LL", "RL"}:
        return "LAT"
    return None


def _text(ds: Dataset, *keys: str) -> str | None:
    for k in keys:
        v = ds.get(k)
        if v not in (None, ""):
            t = " ".join(str(v).split())
            if t:
                return t
    return None


def context_from(ds: Dataset, view: str | None) -> StudyContext:
    age = parse_age(ds.get("PatientAge"))
    if age is None:
        when = ds.get("StudyDate") or ds.get("SeriesDate") or ds.get("AcquisitionDate") or ds.get("ContentDate")
        age = age_from_dates(ds.get("PatientBirthDate"), when)
    body = _text(ds, "BodyPartExamined")
    return StudyContext(
        age_years=age,
        sex=parse_sex(ds.get("PatientSex")),
        view=view,
        indication=_text(ds, "ReasonForStudy", "ReasonForTheRequestedProcedure", "RequestedProcedureDescription"),
        body_part=body.upper() if body else None,
        study_description=_text(ds, "StudyDescription"),
        dicom_modality=_text(ds, "Modality"),
    )


# ---------------------------------------------------------------- DICOM studies


def _route(ref: StudyRef, ctx: StudyContext, modality: str, force: bool, notes: list[str]) -> str:
    if modality == "auto":
        return resolve_modality(ctx, "auto")
    resolve_modality(ctx, modality)  # validates the name
    why = mismatch_reason(ctx, modality)
    if why:
        if not force:
            raise UnsupportedModality(why)
        notes.append(f"forced to {modality}: {why.split(';')[0]}")
    return modality


def _load_dicom(ref, files, rasters, root, modality, max_images, force, include_phi) -> Study | StudyError:
    notes: list[str] = []
    headers: list[tuple[Path, Dataset]] = []
    skipped: list[str] = []
    failures: list[str] = []
    for path in files:
        file_notes: list[str] = []
        rel = relpath(path, root)
        try:
            ds = read_dataset(path, header_only=True, notes=file_notes)
        except IngestError as exc:
            failures.append(f"{rel}: {exc}")
            continue
        why = non_image_reason(ds)
        if why:
            skipped.append(f"{rel}: {why}")
            continue
        broken = header_problem(ds)
        if broken:
            failures.append(f"{rel}: {broken}")
            continue
        notes.extend(f"{rel}: {n}" for n in file_notes)
        headers.append((path, ds))
    if not headers:
        if rasters:
            return _load_raster(ref, rasters, root, modality, max_images, force)
        if failures:
            return StudyError(ref=ref, stage="ingest", reason=failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
        kinds = sorted({s.split(": ", 1)[1] for s in skipped})
        return StudyError(ref=ref, stage="ingest", reason="; ".join(kinds), status="skipped")
    notes.extend(f"skipped {s}" for s in skipped)
    notes.extend(f"unreadable {f}" for f in failures)
    if rasters:
        notes.append(f"ignored {len(rasters)} PNG/JPEG file(s) in a DICOM study folder")

    headers.sort(key=lambda item: str(item[0]))
    first = headers[0][1]
    ctx = context_from(first, view_of(first))
    template = _route(ref, ctx, modality, force, notes)

    if template == "chest_xray":
        groups, wanted = _chest_choice(headers, max_images, notes)
    else:
        groups = _series_choice(headers, max_images, notes, root, template)
        wanted = max_images

    images: list[ImageInput] = []
    errors: list[str] = []
    for slices in groups:
        if len(images) >= wanted:
            break
        try:
            rendered = render_slices(slices, max_tiles=MAX_TILES if len(slices) > 1 else 1)
        except IngestError as exc:
            errors.append(f"{relpath(slices[0].path, root)}: {exc}")
            continue
        images.append(_image_input(slices, rendered, root))
        notes.extend(f"{relpath(slices[0].path, root)}: {n}" for n in rendered.notes)
    if not images:
        return StudyError(ref=ref, stage="ingest", reason=errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    notes.extend(f"not decoded {e}" for e in errors)
    view = images[0].view
    ctx = StudyContext(**{**ctx.__dict__, "view": view if template == "chest_xray" else ctx.view})
    phi = phi_from_dataset(first) if include_phi else {}
    return Study(ref=ref, images=tuple(images), context=ctx, notes=_trim(notes), phi=phi)


def _trim(notes: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for n in notes:
        seen.setdefault(scrub(n), None)
    out = list(seen)
    if len(out) > _MAX_NOTES:
        out = out[: _MAX_NOTES - 1] + [f"... {len(out) - _MAX_NOTES + 1} more notes"]
    return tuple(out)


def _image_input(slices: list[Slice], rendered: Rendered, root: Path) -> ImageInput:
    files = sorted({s.path for s in slices})
    first = slices[0].header
    source = relpath(files[0], root) if len(files) == 1 else relpath(Path(os.path.commonpath([str(f.parent) for f in files])), root)
    return ImageInput(
        source=source,
        sha256=_sha256(files),
        image=rendered.image,
        kind="dicom",
        original_shape=rendered.original_shape,
        photometric=rendered.photometric,
        transfer_syntax=transfer_syntax(first),
        windowing=rendered.windowing,
        frames=rendered.frames,
        view=view_of(first),
        series_description=_text(first, "SeriesDescription"),
    )


def _chest_choice(headers, max_images, notes) -> tuple[list[list[Slice]], int]:
    """Frontal first, then lateral; returns candidates (chosen first, the rest as fallbacks) and how many to use."""

    def rank(item) -> int:
        return {"PA": 0, "AP": 1, "LAT": 3}.get(view_of(item[1]) or "", 2)  # unknown views sit in between

    ordered = sorted(headers, key=lambda it: (rank(it), str(it[0])))
    frontal = [it for it in ordered if rank(it) < 3]
    lateral = [it for it in ordered if rank(it) == 3]
    chosen = [frontal[0]] if frontal else []
    if lateral and len(chosen) < max_images:
        chosen.append(lateral[0])
    rest = [it for it in ordered if not any(it is c for c in chosen)]
    if rest:
        views = ", ".join(sorted({view_of(d) or "unknown" for _, d in rest}))
        notes.append(f"{len(rest)} more image file(s) not used (views: {views})")
    groups = [[Slice(p, d, i) for i in range(frame_count(d))] for p, d in chosen + rest]
    return groups, len(chosen)


def _series_choice(headers, max_images, notes, root, template) -> list[list[Slice]]:
    """Rank series and return one ordered slice list per series."""
    by_series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p, d in headers:
        by_series[str(d.get("SeriesInstanceUID", "") or p.parent)].append((p, d))

    def series_rank(items):
        d = items[0][1]
        itype = [str(x).upper() for x in (d.get("ImageType") or [])]
        desc = " ".join(str(d.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).upper()
        derived = 1 if itype[:1] == ["DERIVED"] else 0
        scout = 1 if ("LOCALIZER" in itype or any(w in desc for w in ("SCOUT", "LOCALIZER", "SURVIEW", "TOPOGRAM"))) else 0
        axial = 0 if ("AXIAL" in itype or template != "ct") else 1
        n = max(len(items), max(frame_count(x) for _, x in items))
        return (scout, derived, axial, -n, str(items[0][0]))

    ranked = sorted(by_series.values(), key=series_rank)
    groups: list[list[Slice]] = []
    for items in ranked:
        multi = [(p, d) for p, d in items if frame_count(d) > 1]
        if multi:
            p, d = max(multi, key=lambda it: (frame_count(it[1]), -len(str(it[0]))))
            if len(items) > 1:
                notes.append(f"series with {len(items)} files: used the multi-frame file {relpath(p, root)}")
            groups.append([Slice(p, d, i) for i in range(frame_count(d))])
        else:
            groups.append(sort_slices([Slice(p, d, 0) for p, d in items]))
    if len(ranked) > max_images:
        notes.append(f"{len(ranked) - max_images} more series not used")
    return groups


# ---------------------------------------------------------------- raster studies


def _load_raster(ref, files, root, modality, max_images, force) -> Study | StudyError:
    notes: list[str] = []
    images: list[ImageInput] = []
    fields: dict[str, str] = {}
    errors: list[str] = []
    for path in sorted(files)[:max_images]:
        rel = relpath(path, root)
        try:
            rendered = render_raster(path)
        except IngestError as exc:
            errors.append(f"{rel}: {exc}")
            continue
        side, side_name, side_notes = sidecar_for(path)
        notes.extend(side_notes)
        if side and not fields:
            fields = side
            notes.append(f"context from sidecar {side_name}")
        notes.extend(rendered.notes)
        images.append(ImageInput(
            source=rel, sha256=_sha256([path]), image=rendered.image, kind="raster",
            original_shape=rendered.original_shape, photometric=rendered.photometric,
            windowing=rendered.windowing, frames=rendered.frames, view=_raster_view(fields.get("view")),
        ))
    if not images:
        return StudyError(ref=ref, stage="ingest", reason=errors[0])
    notes.extend(f"not decoded {e}" for e in errors)
    side_mod = (fields.get("modality") or "").strip()
    dicom_modality = {"chest_xray": "CR", "ct": "CT", "mri": "MR", "mr": "MR", "xray": "CR"}.get(side_mod.lower(), side_mod.upper() or None)
    ctx = StudyContext(
        age_years=parse_age(fields.get("age")),
        sex=parse_sex(fields.get("sex")),
        view=_raster_view(fields.get("view")),
        indication=fields.get("indication"),
        body_part=(fields.get("body_part") or None) and fields["body_part"].upper(),
        dicom_modality=dicom_modality,
    )
    _route(ref, ctx if dicom_modality else StudyContext(**{**ctx.__dict__, "dicom_modality": None}), modality, force, notes)
    return Study(ref=ref, images=tuple(images), context=ctx, notes=_trim(notes), phi={})


def _raster_view(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip().upper()
    return "LAT" if v in LATERAL else v
