"""PNG/JPEG studies: Pillow decoding with a pixel limit, and optional CSV/JSON sidecars for context."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .capture import captured
from .privacy import scrub
from .types import MAX_FRAME_PIXELS, MAX_SIDE, IngestError, Rendered

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
SIDECAR_SUFFIXES = (".json", ".csv")
FOLDER_SIDECARS = ("study.json", "study.csv", "metadata.json", "metadata.csv", "sidecar.json", "sidecar.csv")

# Pillow refuses images over this many pixels (DecompressionBombError at twice the limit; we check first).
Image.MAX_IMAGE_PIXELS = MAX_FRAME_PIXELS

_FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "age": ("age", "patient_age", "patientage", "age_years", "patient age"),
    "sex": ("sex", "gender", "patient_sex", "patientsex", "patient sex", "patient gender"),
    "indication": ("indication", "reason", "clinical_history", "history", "clinical_indication",
                   "reasonforstudy", "reason_for_study"),
    "view": ("view", "view_position", "viewposition", "projection"),
    "modality": ("modality",),
    "body_part": ("body_part", "bodypart", "body_part_examined", "bodypartexamined"),
    "file": ("file", "filename", "file_name", "image", "image_index", "image index", "path"),
}


def is_raster(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES


def render_raster(path: Path) -> Rendered:
    """Decode a PNG/JPEG into 8-bit RGB; raise IngestError with a reason."""
    notes: list[str] = []
    try:
        with captured(notes):
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_FRAME_PIXELS:
                    raise IngestError(
                        f"image too large: {h}x{w} pixels exceeds the {MAX_FRAME_PIXELS:,} limit "
                        "(possible decompression bomb)"
                    )
                mode = img.mode
                if ImageFile.LOAD_TRUNCATED_IMAGES and not _reaches_end_marker(path, img.format):
                    raise OSError("image file is truncated")  # what Pillow says when loading strictly
                img = ImageOps.exif_transpose(img)
                img.load()
                rgb, how = _to_rgb8(img)
    except IngestError:
        raise
    except PermissionError:
        raise IngestError("cannot read file: permission denied") from None
    except Image.DecompressionBombError as exc:
        raise IngestError(f"image too large (possible decompression bomb): {scrub(str(exc), 120)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise IngestError(f"unreadable or truncated image ({type(exc).__name__}: {scrub(str(exc), 120)})") from None
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    shape = (h, w, 3) if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else (h, w)
    return Rendered(rgb, shape, mode, how, "frame 1 of 1", notes)


def _reaches_end_marker(path: Path, fmt: str | None) -> bool:
    """Whether a PNG has its IEND chunk, a JPEG its end-of-image marker after the last scan.

    Pillow refuses truncated files unless ImageFile.LOAD_TRUNCATED_IMAGES is set, a process-wide
    switch that other libraries turn on (WeasyPrint does on import, so after the first PDF report a
    truncated input would decode as a half-gray image); then this check refuses them instead.
    """
    data = path.read_bytes()
    if fmt == "PNG":
        at = data.rfind(b"IEND")
        return at >= 4 and len(data) >= at + 8  # chunk type, then its CRC
    if fmt == "JPEG":
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")  # EOI after the start of the last scan
    return True


def _to_rgb8(img: Image.Image) -> tuple[Image.Image, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.percentile(arr, 0.5)), float(np.percentile(arr, 99.5))
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max()) or 1.0
        unit = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
        gray = Image.fromarray(np.rint(unit * 255).astype(np.uint8), "L")
        return gray.convert("RGB"), f"{mode} percentile 0.5-99.5 to 8 bit"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB"), f"{mode} alpha over black"
    if mode == "1":
        return img.convert("L").convert("RGB"), "bilevel as gray"
    if mode == "RGB":
        return img.copy(), "as stored"
    return img.convert("RGB"), f"{mode} -> RGB"


def _norm_key(key: str) -> str | None:
    k = key.strip().lower()
    for name, aliases in _FIELD_ALIASES.items():
        if k in aliases:
            return name
    return None


def _normalise(row: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in row.items():
        name = _norm_key(str(key))
        if name and value not in (None, ""):
            out[name] = str(value).strip()
    return out


def _read_table(path: Path) -> list[dict[str, str]]:
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [data]
        return [_normalise(r) for r in rows if isinstance(r, dict)]
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return [_normalise(r) for r in csv.DictReader(fh)]


def _pick_row(rows: list[dict[str, str]], image: Path) -> dict[str, str] | None:
    if not rows:
        return None
    keyed = [r for r in rows if "file" in r]
    for r in keyed:
        if Path(r["file"]).name in (image.name, image.stem):
            return r
    if len(rows) == 1 and not keyed:
        return rows[0]
    return None


def sidecar_for(image: Path) -> tuple[dict[str, str], str | None, list[str]]:
    """Context fields for a raster image: <stem>.json/.csv, <name>.json/.csv, then a folder sidecar.

    Returns (fields, sidecar file name, notes); a broken sidecar is a note, never an error.
    """
    notes: list[str] = []
    candidates = [image.with_suffix(s) for s in SIDECAR_SUFFIXES]
    candidates += [image.with_name(image.name + s) for s in SIDECAR_SUFFIXES]
    candidates += [image.parent / name for name in FOLDER_SIDECARS]
    # any other table in the folder counts only through a row naming this file
    tables = sorted(p for p in image.parent.iterdir() if p.suffix.lower() in SIDECAR_SUFFIXES and p not in candidates)
    for cand in candidates + tables:
        if cand in tables:
            try:
                rows = _read_table(cand)
            except (OSError, ValueError, csv.Error, UnicodeDecodeError):
                continue
            row = _pick_row([r for r in rows if "file" in r], image)
            if row is not None:
                row.pop("file", None)
                return row, cand.name, notes
            continue
        if not cand.is_file():
            continue
        try:
            with captured([]):  # a sidecar's warnings are not the study's business (and stay off the console)
                rows = _read_table(cand)
        except (OSError, ValueError, csv.Error, UnicodeDecodeError) as exc:
            notes.append(f"sidecar {cand.name} unreadable ({type(exc).__name__}); ignored")
            continue
        row = _pick_row(rows, image)
        if row is not None:
            row.pop("file", None)
            return row, cand.name, notes
    return {}, None, notes
