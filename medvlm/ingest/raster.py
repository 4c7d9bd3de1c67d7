"""PNG/JPEG studies: Pillow decoding with a pixel limit, and optional CSV/JSON sidecars for context."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..paths import display_path
from .capture import captured
from .headers import parse_age
from .privacy import scrub
from .types import MAX_FRAME_PIXELS, MAX_SIDE, IngestError, Rendered

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
SIDECAR_SUFFIXES = (".json", ".csv")
FOLDER_SIDECARS = ("study.json", "study.csv", "metadata.json", "metadata.csv", "sidecar.json", "sidecar.csv")
MAX_SIDECAR_BYTES = 64 << 20  # a larger table is not read (the NIH Data_Entry_2017.csv is 7.5 MB)
MAX_SIDECAR_DEPTH = 16  # a sidecar is flat; deeper JSON is hostile or not a sidecar

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


def _norm_key(key) -> str | None:
    k = str(key).strip().lower()
    for name, aliases in _FIELD_ALIASES.items():
        if k in aliases:
            return name
    return None


def _normalise(row: dict) -> dict[str, Any]:
    """The known fields of one sidecar row, values as found (checked later by context_fields)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = _norm_key(key)
        if name and name not in out and value not in (None, ""):
            out[name] = value.strip() if isinstance(value, str) else value
    return out


@dataclass(frozen=True)
class _Table:
    """One sidecar file parsed once: its rows, the rows naming a file indexed by that name, or why it is unusable."""

    rows: tuple[dict, ...] = ()
    by_name: dict[str, dict] = field(default_factory=dict)
    error: str | None = None

    def row_for(self, image: Path, *, keyed_only: bool) -> dict | None:
        for name in (image.name, image.stem):
            if name in self.by_name:
                return dict(self.by_name[name])
        if not keyed_only and len(self.rows) == 1 and not self.by_name:
            return dict(self.rows[0])
        return None


def _depth(data) -> int:
    """How deeply lists and objects nest in parsed JSON (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_SIDECAR_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse_table(path: Path) -> _Table:
    """Read and index one sidecar; every problem is the table's one-line error, never an exception."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return _Table(error="not a regular file")
        if st.st_size > MAX_SIDECAR_BYTES:
            return _Table(error=f"larger than {MAX_SIDECAR_BYTES // (1 << 20)} MB")
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 BOM (Windows editors) is fine
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except RecursionError:
                return _Table(error=f"nested more than {MAX_SIDECAR_DEPTH} levels")
            if _depth(data) > MAX_SIDECAR_DEPTH:
                return _Table(error=f"nested more than {MAX_SIDECAR_DEPTH} levels")
            raw = data if isinstance(data, list) else [data]
        else:
            raw = list(csv.DictReader(io.StringIO(text, newline="")))
    except UnicodeDecodeError:
        return _Table(error="not UTF-8 text")
    except (OSError, ValueError, csv.Error) as exc:
        return _Table(error=f"unreadable ({type(exc).__name__})")
    rows = tuple(_normalise(r) for r in raw if isinstance(r, dict))
    by_name: dict[str, dict] = {}
    for r in rows:
        if "file" in r and isinstance(r["file"], (str, int)):
            by_name.setdefault(PurePath(str(r["file"]).replace("\\", "/")).name, r)
    return _Table(rows, by_name)


@lru_cache(maxsize=64)
def _table_at(path: str, size: int, mtime_ns: int) -> _Table:
    return _parse_table(Path(path))


def _table(path: Path) -> _Table:
    """A sidecar parsed once per version of the file (a folder table serves every image beside it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _Table(error=f"unreadable ({exc.strerror or type(exc).__name__})")
    return _table_at(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _tables_at(folder: str, mtime_ns: int) -> tuple[str, ...]:
    try:
        with os.scandir(folder) as it:
            return tuple(sorted(e.path for e in it if Path(e.name).suffix.lower() in SIDECAR_SUFFIXES
                                and not e.name.startswith(".")))
    except OSError:
        return ()


def _folder_tables(folder: Path) -> list[Path]:
    """The JSON/CSV files of a folder, listed once per version of the folder (not once per image)."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return []
    return [Path(p) for p in _tables_at(str(folder), mtime)]


def sidecar_for(image: Path) -> tuple[dict[str, Any], str | None, list[str]]:
    """Context fields for a raster image: <stem>.json/.csv, <name>.json/.csv, then a folder sidecar,
    then a row naming the image in any other table of the folder.

    Returns (fields as found, sidecar file name, notes). A broken sidecar is a note on the image it
    belongs to (its own or its folder's), never an error; a broken table of the folder that is not
    this image's is passed over without a word. Values are checked by context_fields.
    """
    notes: list[str] = []
    candidates = [image.with_suffix(s) for s in SIDECAR_SUFFIXES]
    candidates += [image.with_name(image.name + s) for s in SIDECAR_SUFFIXES]
    candidates += [image.parent / name for name in FOLDER_SIDECARS]
    tables = [p for p in _folder_tables(image.parent) if p not in candidates]
    for cand in candidates:
        if not cand.exists():
            continue
        table = _table(cand)
        if table.error:
            notes.append(f"sidecar {display_path(cand.name)} rejected ({table.error}); ignored")
            continue
        row = table.row_for(image, keyed_only=False)
        if row is not None:
            row.pop("file", None)
            return row, display_path(cand.name), notes
    for other in tables:
        table = _table(other)
        row = None if table.error else table.row_for(image, keyed_only=True)
        if row is not None:
            row.pop("file", None)
            return row, display_path(other.name), notes
    return {}, None, notes


_SEXES = {"M": "M", "MALE": "M", "MAN": "M", "F": "F", "FEMALE": "F", "WOMAN": "F", "O": "O", "OTHER": "O"}


def _shown(value: Any) -> str:
    """A rejected value, short enough for a note (no quotes: notes drop quoted text)."""
    text = " ".join(str(value).split())
    return text if len(text) <= 24 else text[:23] + "…"


def context_fields(found: dict[str, Any], sidecar: str | None) -> tuple[dict[str, Any], list[str]]:
    """Check a sidecar's values: (usable fields, one note per value ignored and why).

    age: a number of years 0-129 (or DICOM AS like 063Y); sex: M/F/O (male, female...); view,
    modality, body_part, indication: text (numbers are taken as text; lists, objects, booleans
    and NaN are not).
    """
    where = f"sidecar {sidecar}: " if sidecar else ""
    fields: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in found.items():
        if name == "file":
            continue
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            notes.append(f"{where}{name} ignored ({type(value).__name__}, not a value)")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            notes.append(f"{where}{name} ignored ({_shown(value)} is not a number)")
            continue
        if name == "age":
            age = parse_age(value if isinstance(value, str) else str(value))
            if age is None:
                notes.append(f"{where}age {_shown(value)} ignored (not an age in years from 0 to 129)")
            else:
                fields["age"] = age
        elif name == "sex":
            sex = _SEXES.get(value.strip().upper()) if isinstance(value, str) else None
            if sex is None:
                notes.append(f"{where}sex {_shown(value)} ignored (expected M, F or O)")
            else:
                fields["sex"] = sex
        else:
            text = value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))
            text = " ".join(text.split())
            if text:
                fields[name] = text
    return fields, notes
