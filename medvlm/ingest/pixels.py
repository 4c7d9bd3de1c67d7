"""Pixel math: stored values -> values in 0..1 per channel, with a description of how.

Grayscale, in DICOM order:
  stored values -> PixelPaddingValue masked -> Modality LUT / RescaleSlope+Intercept
  -> VOI (mode dependent, below) -> MONOCHROME1 / Presentation LUT INVERSE inverted.

VOI by mode:
  xray (CR, DX, MG, RF, XA and every other grayscale modality): the VOI LUT sequence, else the first
      WindowCenter/WindowWidth pair in the header (pydicom's apply_voi_lut / apply_windowing, so
      LINEAR, LINEAR_EXACT and SIGMOID are honoured), else a percentile window 0.5-99.5 over the
      non-padding pixels. A header window that cannot be used (WindowWidth 0, a center `abc`, a
      malformed VOI LUT) falls back to the percentile window; the description names the bad value. A header window more than 3x wider than that percentile range is a
      placeholder that shows no anatomy (e.g. WC/WW 32768/65536 on 12-bit data), so the
      percentile window is used instead and the description says so. Output is gray in R, G, B.
  ct: three fixed windows by body region packed into R, G and B (see ct_windows.py).
  mr: robust percentile window, 0.5th percentile of all selected pixels to the 99.5th percentile of
      the pixels above it, computed jointly over every slice that reaches the model (so tiles share
      one contrast); header windows are ignored because MR windows are rarely set for the stack.
Colour: RGB and YBR_* are converted to RGB by the decoder (as_rgb), PALETTE COLOR through
apply_color_lut; samples deeper than 8 bits are scaled by their bit depth.
"""

from __future__ import annotations

import numpy as np

from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

from .ct_windows import CT_WINDOWS, ct_description, ct_region
from .privacy import scrub

# (modality values, padding mask or None, the file's dataset) for one frame
GrayItem = tuple[np.ndarray, "np.ndarray | None", Dataset]


def mode_for(header) -> str:
    """Rendering mode from a header (Dataset or HeaderSummary): color, ct, mr or xray."""
    photometric = str(header.get("PhotometricInterpretation", "")).upper()
    if int(header.get("SamplesPerPixel", 1) or 1) > 1 or photometric.startswith(("RGB", "YBR", "PALETTE")):
        return "color"
    modality = str(header.get("Modality", "") or "").upper()
    if modality == "CT":
        return "ct"
    if modality == "MR":
        return "mr"
    return "xray"


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


def percentile_window(values: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> tuple[float, float]:
    """(lo, hi): the lo_q percentile, and the hi_q percentile of the values above it."""
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


def linear(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
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
        return linear(out, lo, max(hi, lo + 1)), "VOI LUT from header" + (f" ({scrub(desc, 40)})" if desc else "")
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = header_window(ds)
        if isinstance(window, str):
            raise BadWindow(window)
        c, w, count = window
        proxy = _proxy_window_ds(ds)
        try:
            out = apply_windowing(values.astype(np.float64), proxy, index=0)
        except (ValueError, TypeError, IndexError) as exc:  # e.g. a width pydicom refuses for the VOI function
            raise BadWindow(f"WC/WW {_num(c)}/{_num(w)} unusable ({scrub(str(exc), 80)})") from None
        several = " (first of %d)" % count if count > 1 else ""
        func = str(ds.get("VOILUTFunction", "") or "").upper()
        func = f" {func}" if func and func != "LINEAR" else ""
        return (out / 65535.0).astype(np.float32), f"WC/WW {_num(c)}/{_num(w)} from header{several}{func}"
    return None


class BadWindow(ValueError):
    """The header's window cannot be used; str() names the value that was wrong (window values are not PHI)."""


def _raw_text(ds: Dataset, keyword: str) -> str:
    """An element's value as written in the file, for a message (never raises)."""
    try:
        raw = ds.get_item(keyword)
        value = raw.value if raw is not None else None
        if isinstance(value, bytes):
            text = value.decode("ascii", "replace")
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v) for v in value)  # as DICOM writes several values
        else:
            text = str(value)
    except Exception:  # noqa: BLE001 - only used to describe a bad value
        return "?"
    text = " ".join(text.replace("\x00", "").split())
    return text if len(text) <= 24 else text[:23] + "…"


def header_window(ds: Dataset) -> tuple[float, float, int] | str:
    """(center, width, number of windows) of the first header window, or why it cannot be used.

    A center or width that is not a finite number (e.g. `abc`), or a width below 1 (WindowWidth 0),
    is refused with a message naming the value, so the caller falls back to the percentile window.
    """
    try:
        wc, ww = ds["WindowCenter"], ds["WindowWidth"]
        c = float(wc.value[0] if wc.VM > 1 else wc.value)
        w = float(ww.value[0] if ww.VM > 1 else ww.value)
        count = int(wc.VM)
    except Exception:  # noqa: BLE001 - pydicom raises ValueError, TypeError or IndexError for bad DS values
        return f"WC/WW {_raw_text(ds, 'WindowCenter')}/{_raw_text(ds, 'WindowWidth')} is not a number"
    if not (np.isfinite(c) and np.isfinite(w)):
        return f"WC/WW {_num(c) if np.isfinite(c) else c}/{_num(w) if np.isfinite(w) else w} is not a finite number"
    if w < 1:
        return f"WindowWidth {_num(w)} is below 1"
    return c, w, count


def _num(v) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def inverted(ds: Dataset) -> bool:
    mono1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return mono1 != inverse


def gray_units(items: list[GrayItem], mode: str) -> tuple[list[np.ndarray], str]:
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
            chans = [linear(v, level - width / 2, level + width / 2) for _, width, level in wins]
            out.append(np.stack(chans, axis=-1))
        return out, ct_description(region)
    if mode == "mr":
        pool = np.concatenate([v[~m] if m is not None else v.ravel() for v, m, _ in items])
        lo, hi = percentile_window(pool)
        out = [_finish(linear(v, lo, hi), m, ds) for v, m, ds in items]
        return out, f"percentile 0.5-99.5 ({lo:g}..{hi:g})"
    # xray and every other grayscale modality
    out = []
    desc = ""
    for values, mask, ds in items:
        valid = values[~mask] if mask is not None else values.ravel()
        lo, hi = percentile_window(valid)
        try:
            header = header_voi(ds, values)
        except BadWindow as exc:
            out.append(_finish(linear(values, lo, hi), mask, ds))
            desc = f"percentile 0.5-99.5 ({lo:g}..{hi:g}); header window not used: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001 - a malformed VOI LUT: the documented fallback, named
            out.append(_finish(linear(values, lo, hi), mask, ds))
            desc = f"percentile 0.5-99.5 ({lo:g}..{hi:g}); header VOI LUT not used ({type(exc).__name__}: {scrub(str(exc), 80)})"
            continue
        if header is not None and _full_range_window(ds, lo, hi):
            unit, desc = linear(values, lo, hi), f"percentile 0.5-99.5 ({lo:g}..{hi:g}); header window spans the full range"
        elif header is not None:
            unit, desc = header
        else:
            unit, desc = linear(values, lo, hi), f"percentile 0.5-99.5 ({lo:g}..{hi:g})"
        out.append(_finish(unit, mask, ds))
    if inverted(first_ds):
        desc += ", inverted (MONOCHROME1)" if str(first_ds.PhotometricInterpretation).upper() == "MONOCHROME1" else ", inverted (Presentation LUT INVERSE)"
    return out, desc


def _full_range_window(ds: Dataset, lo: float, hi: float) -> bool:
    """A header window over 3x wider than the data's own 0.5-99.5 range is a placeholder
    (e.g. WC/WW 32768/65536 on 12-bit data): it shows every value and no anatomy."""
    if "VOILUTSequence" in ds or "WindowWidth" not in ds:
        return False
    window = header_window(ds)
    if isinstance(window, str):
        return False
    center, width, _ = window
    if hi - lo < 8:  # (nearly) uniform data: nothing to learn from its range
        return False
    covers = center - width / 2 <= lo and center + width / 2 >= hi
    return covers and width > 3.0 * (hi - lo)


def _finish(unit: np.ndarray, mask: np.ndarray | None, ds: Dataset) -> np.ndarray:
    if inverted(ds):
        unit = 1.0 - unit
    if mask is not None:
        unit = unit.copy()
        unit[mask] = 0.0  # padding shows as black, never as signal
    return unit


def color_unit(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """A colour frame (RGB from the decoder, or PALETTE COLOR indices) -> 0..1 RGB."""
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
