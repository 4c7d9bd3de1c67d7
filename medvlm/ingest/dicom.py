"""DICOM reading and pixel normalisation: any readable image -> 8-bit RGB, with how it was derived.

Pixel pipeline (grayscale), in DICOM order:
  stored values -> PixelPaddingValue masked -> Modality LUT / RescaleSlope+Intercept
  -> VOI (mode dependent, below) -> MONOCHROME1 / Presentation LUT INVERSE inverted -> 8 bit.

VOI by mode:
  xray (CR, DX, MG, RF, XA and every other grayscale modality): the VOI LUT sequence, else the first
      WindowCenter/WindowWidth pair in the header (pydicom's apply_voi_lut / apply_windowing, so
      LINEAR, LINEAR_EXACT and SIGMOID are honoured), else a percentile window 0.5-99.5 over the
      non-padding pixels. A header window more than 3x wider than that percentile range is a
      placeholder that shows no anatomy (e.g. WC/WW 32768/65536 on 12-bit data), so the
      percentile window is used instead and the description says so. Output is gray in R, G, B.
  ct: three fixed windows in Hounsfield units chosen by body region, packed into the R, G and B
      channels (the MedGemma convention for CT slices), so one image carries lung, soft tissue and
      bone contrast without shrinking the slices into a window montage:
          region    R                      G                       B
          head      bone  W2800 L600       subdural W215 L75       brain W80 L40
          chest     lung  W1500 L-600      mediastinum W400 L40    bone W1800 L400
          abdomen   bone  W1800 L400       soft tissue W400 L40    liver W160 L60
          other     wide  W2048 L0         soft tissue W350 L40    brain W80 L40
      Region comes from BodyPartExamined, then Study/Series description and protocol name.
  mr: robust percentile window, 0.5th percentile of all selected pixels to the 99.5th percentile of
      the pixels above it, computed jointly over every slice that reaches the model (so tiles share
      one contrast); header windows are ignored because MR windows are rarely set for the stack.
Colour: RGB and YBR_* are converted to RGB by the decoder (as_rgb), PALETTE COLOR through
apply_color_lut; samples deeper than 8 bits are scaled by their bit depth.

Frames and slices: a multi-frame file or a multi-file series contributes up to MAX_TILES frames,
taken at the centres of equal bins along the stack (so the extreme ends, often outside the anatomy,
are avoided), sorted by ImagePositionPatient along the slice normal (else InstanceNumber), and laid
out as a near-square montage, each tile at most TILE_SIDE pixels; ImageInput.frames records which
(1-based). A single image is kept at native size unless its long side exceeds MAX_SIDE.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .privacy import scrub

MAX_FRAME_PIXELS = 64_000_000  # per frame; a larger header is treated as a decompression bomb
MAX_TILES = 9
TILE_SIDE = 512
MAX_SIDE = 2048

# SOP classes that carry no image for a model: SR/KO (88.x), presentation states (11.x),
# raw data/registration/SEG (66.x), encapsulated documents (104.x), waveforms (9.x), RT objects.
NON_IMAGE_SOP_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.481.",
    "1.2.840.10008.1.3.10",  # DICOMDIR (media storage directory)
)
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "KO", "PR", "SEG", "DOC", "REG", "FID", "RWV", "PLAN", "ECG", "HD", "AU", "RESP",
     "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "RTIMAGE_PLAN"}
)

# What to install when a transfer syntax has no working decoder (pydicom's plugin names).
_INSTALL_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}

CT_WINDOWS: dict[str, tuple[tuple[str, float, float], ...]] = {
    # region: ((name, width, level) for R, G, B)
    "head": (("bone", 2800, 600), ("subdural", 215, 75), ("brain", 80, 40)),
    "chest": (("lung", 1500, -600), ("mediastinum", 400, 40), ("bone", 1800, 400)),
    "abdomen": (("bone", 1800, 400), ("soft tissue", 400, 40), ("liver", 160, 60)),
    "other": (("wide", 2048, 0), ("soft tissue", 350, 40), ("brain", 80, 40)),
}
_REGION_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head", ("HEAD", "BRAIN", "SKULL", "CRANI", "CEREB", "NEURO", "SINUS", "ORBIT", "FACE")),
    ("chest", ("CHEST", "THORAX", "LUNG", "THOR", "PULM", "CTPA", "HEART", "CARDIAC")),
    ("abdomen", ("ABDOMEN", "ABD", "PELVIS", "LIVER", "KIDNEY", "RENAL", "PANCREA", "COLON")),
)


class IngestError(Exception):
    """A file or study that cannot become an image; str() is a one-line reason."""


@dataclass
class Rendered:
    """An image ready for the model plus how it was made."""

    image: Image.Image
    original_shape: tuple[int, ...]
    photometric: str | None
    windowing: str
    frames: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Slice:
    """One frame of one file, before decoding."""

    path: Path
    header: Dataset
    index: int  # frame index inside the file (0-based)


# ---------------------------------------------------------------- reading


@contextlib.contextmanager
def captured(notes: list[str]) -> Iterator[None]:
    """Collect Python warnings and pydicom/PIL log records into notes instead of the console."""

    class _Into(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(scrub(record.getMessage()))

    handler = _Into(level=logging.WARNING)
    loggers = [logging.getLogger("pydicom"), logging.getLogger("PIL")]
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            notes.append(scrub(str(w.message)))
    finally:
        for lg, prop in saved:
            lg.removeHandler(handler)
            lg.propagate = prop


def _dedupe(notes: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for n in notes:
        seen.setdefault(n, None)
    return list(seen)


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced read of random bytes yields a few garbage elements; real data has these."""
    keys = ("SOPClassUID", "StudyInstanceUID", "Modality", "Rows", "SeriesInstanceUID", "PatientID")
    try:
        return sum(1 for k in keys if k in ds) >= 2
    except Exception:
        return False


def read_dataset(path: Path, *, header_only: bool, notes: list[str] | None = None) -> Dataset:
    """Read a DICOM file (stop_before_pixels when header_only); raise IngestError with a reason."""
    notes = notes if notes is not None else []
    try:
        size = path.stat().st_size
    except PermissionError:
        raise IngestError("cannot read file: permission denied") from None
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    if size == 0:
        raise IngestError("empty file (0 bytes)")
    local: list[str] = []
    try:
        with captured(local):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=header_only)
            except InvalidDicomError:
                ds = _read_forced(path, header_only)
                notes.append("read without DICOM preamble/file meta (force=True)")
    except IngestError:
        raise
    except PermissionError:
        raise IngestError("cannot read file: permission denied") from None
    except IsADirectoryError:
        raise IngestError("is a directory") from None
    except (EOFError, OSError) as exc:
        raise IngestError(f"truncated or unreadable DICOM header ({type(exc).__name__}: {scrub(str(exc), 120)})") from None
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise IngestError(f"corrupt DICOM header ({type(exc).__name__}: {scrub(str(exc), 120)})") from None
    notes.extend(local)
    if len(ds) == 0:
        raise IngestError("truncated file: no data elements after the file meta")
    _ensure_transfer_syntax(ds)
    return ds


def _read_forced(path: Path, header_only: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except Exception:
        raise IngestError("not a DICOM file (no DICM marker and not a raw DICOM dataset)") from None
    if not _looks_like_dicom(ds):
        raise IngestError("not a DICOM file (no DICM marker and not a raw DICOM dataset)")
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files read without meta need a transfer syntax for decoding; use the encoding that was read."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def transfer_syntax(ds: Dataset) -> str | None:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return UID(uid).name if uid else None


def non_image_reason(ds: Dataset) -> str | None:
    """Why a header holds no image for the model (SR, KO, PR, SEG, PDF...), or None if it does.

    An image SOP class whose header lacks Rows/Columns is not "no image" but a broken file:
    read_dataset/check_header report that as an error.
    """
    sop = _sop_class(ds)
    modality = str(ds.get("Modality", "") or "").upper()
    if any(sop.startswith(p) for p in NON_IMAGE_SOP_PREFIXES) or modality in NON_IMAGE_MODALITIES:
        what = UID(sop).name if sop else ""
        label = modality or "object"
        if what and what != sop:
            return f"no image: {label} ({what})"
        return f"no image: {label} object"
    if _missing_pixel_description(ds) and not sop.startswith(IMAGE_SOP_ROOT):
        return f"no image: {modality or 'DICOM'} object without pixel description"
    return None


IMAGE_SOP_ROOT = "1.2.840.10008.5.1.4.1.1."


def _sop_class(ds: Dataset) -> str:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop:
        sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    return sop


def _missing_pixel_description(ds: Dataset) -> bool:
    return "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds


def header_problem(ds: Dataset) -> str | None:
    """A one-line reason when an image header is unusable (truncated), else None."""
    if _missing_pixel_description(ds) and non_image_reason(ds) is None:
        return "image header incomplete (no Rows/Columns/PhotometricInterpretation): truncated file?"
    return None


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def check_decodable(ds: Dataset) -> None:
    """Raise IngestError if pixels cannot be decoded here (missing plugin, unsupported syntax, too big)."""
    uid = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise IngestError(f"unsupported transfer syntax {UID(uid).name} ({uid}): no pixel decoder exists") from None
    if not decoder.is_available:
        hint = _INSTALL_HINTS.get(str(uid), "pylibjpeg with the matching plugin, or gdcm")
        raise IngestError(f"no decoder available for {UID(uid).name}: install {hint} (pip install {hint})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise IngestError("missing or invalid Rows/Columns") from None
    if rows <= 0 or cols <= 0:
        raise IngestError(f"invalid image size {rows}x{cols}")
    if rows * cols > MAX_FRAME_PIXELS:
        raise IngestError(
            f"image too large: {rows}x{cols} pixels per frame exceeds the {MAX_FRAME_PIXELS:,} limit "
            "(possible decompression bomb)"
        )


def decode_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame's stored values (RGB for colour files); raise IngestError with a reason."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise IngestError("no pixel data element in file (truncated?)")
    n = frame_count(ds)
    try:
        if n > 1:
            return pixel_array(ds, index=index, as_rgb=True)
        return pixel_array(ds, as_rgb=True)
    except IngestError:
        raise
    except MemoryError:
        raise IngestError("not enough memory to decode pixel data") from None
    except Exception as exc:
        msg = scrub(str(exc), 200)
        if "less than expected" in msg or "shorter" in msg or "truncat" in msg.lower():
            sizes = re.search(r"\((\d+) vs (\d+) bytes\)", msg)
            detail = f" ({sizes.group(1)} of {sizes.group(2)} bytes)" if sizes else ""
            raise IngestError(f"pixel data shorter than declared{detail}: truncated file?") from None
        msg = msg.replace("Unable to decode as exceptions were raised by all available plugins: ", "")
        uid = ds.file_meta.TransferSyntaxUID
        raise IngestError(f"pixel decoding failed for {UID(uid).name}: {type(exc).__name__}: {msg}") from None


# ---------------------------------------------------------------- grayscale values


def _padding_mask(ds: Dataset, raw: np.ndarray) -> np.ndarray | None:
    """True where the stored value is PixelPaddingValue (or within the padding range)."""
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    try:
        pad = int(pad)
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is not None:
            lo, hi = sorted((pad, int(limit)))
            mask = (raw >= lo) & (raw <= hi)
        else:
            mask = raw == pad
    except (TypeError, ValueError):
        return None
    return mask if mask.any() else None


def modality_values(ds: Dataset, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored values -> modality values (HU for CT), and the padding mask."""
    mask = _padding_mask(ds, raw)
    values = apply_modality_lut(raw, ds)
    return np.asarray(values, dtype=np.float32), mask


def _percentile_window(values: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    lo = float(np.percentile(values, lo_q))
    above = values[values > lo]
    hi = float(np.percentile(above, hi_q)) if above.size else lo
    if hi <= lo:
        hi = float(values.max())
        lo = float(values.min())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _linear(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _proxy_window_ds(ds: Dataset) -> Dataset:
    """A dataset with only the window, so apply_windowing maps onto 0..65535 (unsigned, 16 bit)."""
    proxy = Dataset()
    proxy.PhotometricInterpretation = "MONOCHROME2"
    proxy.BitsStored = 16
    proxy.PixelRepresentation = 0
    proxy.WindowCenter = ds.WindowCenter
    proxy.WindowWidth = ds.WindowWidth
    if "VOILUTFunction" in ds:
        proxy.VOILUTFunction = ds.VOILUTFunction
    return proxy


def header_voi(ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Apply the header VOI LUT or first window to modality values -> (0..1, description)."""
    seq = ds.get("VOILUTSequence")
    if seq:
        item = seq[0]
        lut = np.asarray(item.LUTData, dtype=np.float64)
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float32)
        lo, hi = float(lut.min()), float(lut.max())
        desc = str(item.get("LUTExplanation", "") or "").strip()
        return _linear(out, lo, max(hi, lo + 1)), "VOI LUT from header" + (f" ({scrub(desc, 40)})" if desc else "")
    if "WindowCenter" in ds and "WindowWidth" in ds:
        proxy = _proxy_window_ds(ds)
        out = apply_windowing(values.astype(np.float64), proxy, index=0)
        wc, ww = ds["WindowCenter"], ds["WindowWidth"]
        c = wc.value[0] if wc.VM > 1 else wc.value
        w = ww.value[0] if ww.VM > 1 else ww.value
        several = " (first of %d)" % wc.VM if wc.VM > 1 else ""
        func = str(ds.get("VOILUTFunction", "") or "").upper()
        func = f" {func}" if func and func != "LINEAR" else ""
        return (out / 65535.0).astype(np.float32), f"WC/WW {_num(c)}/{_num(w)} from header{several}{func}"
    return None


def _num(v) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def _inverted(ds: Dataset) -> bool:
    mono1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return mono1 != inverse


def ct_region(ds: Dataset) -> str:
    """head / chest / abdomen / other, from BodyPartExamined then descriptions."""
    texts = [str(ds.get(k, "") or "").upper() for k in
             ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")]
    for text in texts:
        if not text:
            continue
        for region, words in _REGION_WORDS:
            if any(w in text for w in words):
                return region
    return "other"


# ---------------------------------------------------------------- rendering


def select_indices(n: int, k: int) -> list[int]:
    """k indices at the centres of k equal bins over range(n) (all when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


def mode_for(ds: Dataset) -> str:
    """Rendering mode from the header: color, ct, mr or xray."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric.startswith(("RGB", "YBR", "PALETTE")):
        return "color"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality == "CT":
        return "ct"
    if modality == "MR":
        return "mr"
    return "xray"


def sort_slices(slices: list[Slice]) -> list[Slice]:
    """Order single-frame slices along the slice normal (else InstanceNumber, else path)."""

    def position(s: Slice) -> tuple:
        h = s.header
        try:
            ori = [float(x) for x in h.ImageOrientationPatient]
            pos = [float(x) for x in h.ImagePositionPatient]
            normal = np.cross(ori[:3], ori[3:])
            return (0, float(np.dot(normal, pos)), s.index, str(s.path))
        except Exception:
            pass
        try:
            return (1, float(h.InstanceNumber), s.index, str(s.path))
        except Exception:
            return (2, 0.0, s.index, str(s.path))

    return sorted(slices, key=position)


def render_slices(slices: list[Slice], *, max_tiles: int = MAX_TILES, loaded: dict | None = None) -> Rendered:
    """Decode up to max_tiles of the (ordered) slices and turn them into one RGB image."""
    notes: list[str] = []
    chosen_idx = select_indices(len(slices), max_tiles)
    chosen = [slices[i] for i in chosen_idx]
    first = chosen[0].header
    mode = mode_for(first)
    loaded = loaded if loaded is not None else {}
    units: list[np.ndarray] = []
    raw_values: list[tuple[np.ndarray, np.ndarray | None, Dataset]] = []
    with captured(notes):
        for s in chosen:
            ds = loaded.get(s.path)
            if ds is None:
                ds = read_dataset(s.path, header_only=False, notes=notes)
                check_decodable(ds)
                loaded[s.path] = ds
            raw = decode_frame(ds, s.index)
            if mode == "color":
                units.append(_color_unit(ds, raw))
            else:
                if raw.ndim != 2:
                    raise IngestError(f"unexpected pixel array shape {raw.shape} for grayscale image")
                raw_values.append((*modality_values(ds, raw), ds))
        windowing = "colour (RGB)" if mode == "color" else ""
        if mode != "color":
            units, windowing = _gray_units(raw_values, mode)
    image = _montage(units) if len(units) > 1 else _to_image(units[0], limit=MAX_SIDE)
    ds0 = loaded.get(chosen[0].path, first)
    photometric = str(ds0.get("PhotometricInterpretation", "") or "") or None
    if mode == "color" and photometric and photometric != "RGB":
        windowing = f"{photometric} -> RGB"
    total = len(slices)
    frames = _frames_text(chosen_idx, total, is_multiframe=frame_count(first) > 1)
    rows, cols = int(first.Rows), int(first.Columns)
    if total > 1:
        shape: tuple[int, ...] = (total, rows, cols)
    elif mode == "color":
        shape = (rows, cols, 3)
    else:
        shape = (rows, cols)
    return Rendered(image, shape, photometric, windowing, frames, _dedupe(notes))


def _frames_text(chosen: list[int], total: int, is_multiframe: bool) -> str:
    what = "frame" if is_multiframe or total == 1 else "slice"
    if total == 1:
        return "frame 1 of 1"
    picked = ",".join(str(i + 1) for i in chosen)
    if len(chosen) == 1:
        return f"{what} {picked} of {total}"
    return f"montage of {len(chosen)} of {total} {what}s ({picked})"


def _gray_units(items: list[tuple[np.ndarray, np.ndarray | None, Dataset]], mode: str) -> tuple[list[np.ndarray], str]:
    """Modality values -> 0..1 (H, W) or (H, W, 3) arrays, with a windowing description."""
    first_ds = items[0][2]
    if mode == "ct":
        region = ct_region(first_ds)
        wins = CT_WINDOWS[region]
        out = []
        for values, mask, _ in items:
            v = values.copy()
            if mask is not None:
                v[mask] = -1024.0  # padding is air outside the scan field
            chans = [_linear(v, level - width / 2, level + width / 2) for _, width, level in wins]
            out.append(np.stack(chans, axis=-1))
        desc = f"CT {region}: " + ", ".join(f"{ch}={name} W{w} L{lv}" for ch, (name, w, lv) in zip("RGB", wins))
        return out, desc
    if mode == "mr":
        pool = np.concatenate([v[~m] if m is not None else v.ravel() for v, m, _ in items])
        lo, hi = _percentile_window(pool)
        out = [_finish(_linear(v, lo, hi), m, ds) for v, m, ds in items]
        return out, f"percentile 0.5-99.5 ({lo:g}..{hi:g})"
    # xray and every other grayscale modality
    out = []
    desc = ""
    for values, mask, ds in items:
        valid = values[~mask] if mask is not None else values.ravel()
        lo, hi = _percentile_window(valid)
        header = header_voi(ds, values)
        if header is not None and _full_range_window(ds, lo, hi):
            unit, desc = _linear(values, lo, hi), f"percentile 0.5-99.5 ({lo:g}..{hi:g}); header window spans the full range"
        elif header is not None:
            unit, desc = header
        else:
            unit, desc = _linear(values, lo, hi), f"percentile 0.5-99.5 ({lo:g}..{hi:g})"
        out.append(_finish(unit, mask, ds))
    if _inverted(first_ds):
        desc += ", inverted (MONOCHROME1)" if str(first_ds.PhotometricInterpretation).upper() == "MONOCHROME1" else ", inverted (Presentation LUT INVERSE)"
    return out, desc


def _full_range_window(ds: Dataset, lo: float, hi: float) -> bool:
    """A header window over 3x wider than the data's own 0.5-99.5 range is a placeholder
    (e.g. WC/WW 32768/65536 on 12-bit data): it shows every value and no anatomy."""
    if "VOILUTSequence" in ds or "WindowWidth" not in ds:
        return False
    wc, ww = ds["WindowCenter"], ds["WindowWidth"]
    try:
        width = float(ww.value[0] if ww.VM > 1 else ww.value)
        center = float(wc.value[0] if wc.VM > 1 else wc.value)
    except (TypeError, ValueError, IndexError):
        return False
    if hi - lo < 8:  # (nearly) uniform data: nothing to learn from its range
        return False
    covers = center - width / 2 <= lo and center + width / 2 >= hi
    return covers and width > 3.0 * (hi - lo)


def _finish(unit: np.ndarray, mask: np.ndarray | None, ds: Dataset) -> np.ndarray:
    if _inverted(ds):
        unit = 1.0 - unit
    if mask is not None:
        unit = unit.copy()
        unit[mask] = 0.0  # padding shows as black, never as signal
    return unit


def _color_unit(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        top = 255.0 if rgb.dtype == np.uint8 else float(max(int(rgb.max()), 1) if rgb.max() > 255 else 255)
        if rgb.dtype != np.uint8:
            top = 65535.0 if rgb.max() > 255 else 255.0
        return rgb.astype(np.float32) / top
    if raw.ndim == 2:  # SamplesPerPixel 1 flagged as colour; treat as gray
        raw = np.repeat(raw[..., None], 3, axis=-1)
    bits = int(ds.get("BitsStored", 8) or 8)
    return (raw.astype(np.float64) / float(2**bits - 1)).astype(np.float32)


def _to_image(unit: np.ndarray, limit: int) -> Image.Image:
    arr = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L").convert("RGB")
    if max(img.size) > limit:
        img.thumbnail((limit, limit), Image.Resampling.LANCZOS)
    return img


def _montage(units: list[np.ndarray]) -> Image.Image:
    tiles = [_to_image(u, TILE_SIDE) for u in units]
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * w, rows * h))
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet.paste(t, (c * w + (w - t.width) // 2, r * h + (h - t.height) // 2))
    return sheet


def render_file(path: Path, *, max_tiles: int = MAX_TILES) -> tuple[Rendered, Dataset]:
    """Decode one DICOM file on its own (all its frames as candidates); raise IngestError."""
    notes: list[str] = []
    ds = read_dataset(path, header_only=False, notes=notes)
    why = non_image_reason(ds) or header_problem(ds)
    if why:
        raise IngestError(why)
    check_decodable(ds)
    slices = [Slice(path, ds, i) for i in range(frame_count(ds))]
    out = render_slices(slices, max_tiles=max_tiles, loaded={path: ds})
    out.notes = _dedupe(notes + out.notes)
    return out, ds
