"""load_study: decode a discovered study into a Study (images + context), or a StudyError.

Image choice:
- chest_xray: one image per file; the first frontal view (PA, then AP, then other non-lateral),
  then, when max_images >= 2, the first lateral (LL, RL, LAT). Without any view information the
  first max_images files are used. Other files are listed in Study.notes, never silently dropped.
- ct / mri: files are grouped by SeriesInstanceUID; series are ranked (ORIGINAL before DERIVED,
  localizers/scouts last, CT axial first, then more slices first) and the top max_images series
  each become one montage of evenly spaced slices (see montage.py). A series made of several
  multi-frame files uses the file with the most frames.
- PNG/JPEG studies: the raster file itself; context from its CSV/JSON sidecar.

Headers come from the HeaderSummary discovery put in StudyRef.headers (read again only for a file
without one or changed since); file hashes from fileio.sha256_file (see image_sha256).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

from ..fileio import sha256_file
from ..records import ImageInput, Study, StudyContext, StudyError, StudyRef
from .dicom import render_slices
from .discover import relpath
from .headers import LATERAL, context_from, header_text, read_header, view_of
from .montage import sort_slices
from .privacy import phi_from_dataset, scrub
from .raster import context_fields, is_raster, render_raster, sidecar_for
from .read import frame_count, read_dataset
from .route import UnsupportedModality, mismatch_reason, resolve_modality
from .types import MAX_TILES, HeaderSummary, IngestError, Rendered, Slice

FRONTAL = ("PA", "AP")
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


def image_sha256(files: list[Path]) -> str:
    """What ImageInput.sha256 records: the SHA-256 of the file's bytes for an image made from one file;
    for a multi-file series, the SHA-256 of its manifest in `sha256sum` format: one line
    '<sha256 of the file>  <path relative to the series folder (the image's source)>' per file of
    the series, sorted by that path (byte order). Reproduce it in the series folder with
    `LC_ALL=C sha256sum $(LC_ALL=C ls) | sha256sum` (for a flat folder holding only the series).
    File hashes come from fileio.sha256_file: each input is read once per run for hashing.
    """
    if len(files) == 1:
        return sha256_file(files[0])
    folder = os.path.commonpath([str(f.parent) for f in files])
    lines = sorted((Path(os.path.relpath(f, folder)).as_posix(), sha256_file(f)) for f in files)
    # surrogateescape: a file name that is not UTF-8 enters the manifest as its bytes, as sha256sum writes it
    manifest = "".join(f"{digest}  {name}\n" for name, digest in lines).encode("utf-8", "surrogateescape")
    return hashlib.sha256(manifest).hexdigest()


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


def _summaries(ref: StudyRef) -> dict[str, HeaderSummary]:
    """The header summaries discovery made for this study, by file."""
    return {str(Path(h.path)): h for h in ref.headers if isinstance(h, HeaderSummary)}


def _load_dicom(ref, files, rasters, root, modality, max_images, force, include_phi) -> Study | StudyError:
    notes: list[str] = []
    headers: list[tuple[Path, HeaderSummary]] = []
    skipped: list[str] = []
    failures: list[str] = []
    known = _summaries(ref)
    for path in files:
        rel = relpath(path, root)
        summary = known.get(str(path))
        if summary is None or not summary.is_current():  # made elsewhere, or the file changed since
            try:
                summary, _ = read_header(path)
            except IngestError as exc:
                failures.append(f"{rel}: {exc}")
                continue
        if summary.non_image:
            skipped.append(f"{rel}: {summary.non_image}")
            continue
        notes.extend(f"{rel}: {n}" for n in summary.notes)
        headers.append((path, summary))
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
    phi = _identifiers(headers[0][0]) if include_phi else {}
    return Study(ref=ref, images=tuple(images), context=ctx, notes=_trim(notes), phi=phi)


def _identifiers(path: Path) -> dict[str, str]:
    """--include-phi only: the identifiers of the study's first image file (summaries keep none)."""
    return phi_from_dataset(read_dataset(path, header_only=True))


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
        sha256=image_sha256(files),
        image=rendered.image,
        kind="dicom",
        original_shape=rendered.original_shape,
        photometric=rendered.photometric,
        transfer_syntax=first.transfer_syntax,
        windowing=rendered.windowing,
        frames=rendered.frames,
        view=view_of(first),
        series_description=header_text(first, "SeriesDescription"),
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
    by_series: dict[str, list[tuple[Path, HeaderSummary]]] = defaultdict(list)
    for p, d in headers:
        by_series[d.series or str(p.parent)].append((p, d))

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
    fields: dict = {}
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
            fields, value_notes = context_fields(side, side_name)
            notes.append(f"context from sidecar {side_name}")
            notes.extend(value_notes)
        notes.extend(rendered.notes)
        images.append(ImageInput(
            source=rel, sha256=image_sha256([path]), image=rendered.image, kind="raster",
            original_shape=rendered.original_shape, photometric=rendered.photometric,
            windowing=rendered.windowing, frames=rendered.frames, view=_raster_view(fields.get("view")),
        ))
    if not images:
        return StudyError(ref=ref, stage="ingest", reason=errors[0])
    notes.extend(f"not decoded {e}" for e in errors)
    side_mod = (fields.get("modality") or "").strip()
    dicom_modality = {"chest_xray": "CR", "ct": "CT", "mri": "MR", "mr": "MR", "xray": "CR"}.get(side_mod.lower(), side_mod.upper() or None)
    ctx = StudyContext(
        age_years=fields.get("age"),
        sex=fields.get("sex"),
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
