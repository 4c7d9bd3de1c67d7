"""Stacks to one picture: which frames/slices of a stack to show, in what order, and the montage.

A multi-frame file or a multi-file series contributes up to MAX_TILES frames, taken at the centres
of equal bins along the stack (so the extreme ends, often outside the anatomy, are avoided), sorted
by ImagePositionPatient along the slice normal (else InstanceNumber), and laid out as a near-square
montage, each tile at most TILE_SIDE pixels; ImageInput.frames records which (1-based). A single
image is kept at native size unless its long side exceeds MAX_SIDE.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .types import TILE_SIDE, Slice


def select_indices(n: int, k: int) -> list[int]:
    """k indices at the centres of k equal bins over range(n) (all when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


def sort_slices(slices: list[Slice]) -> list[Slice]:
    """Order single-frame slices along the slice normal (else InstanceNumber, else path)."""

    def position(s: Slice) -> tuple:
        h = s.header
        try:
            ori = [float(x) for x in h.get("ImageOrientationPatient")]
            pos = [float(x) for x in h.get("ImagePositionPatient")]
            normal = np.cross(ori[:3], ori[3:])
            return (0, float(np.dot(normal, pos)), s.index, str(s.path))
        except Exception:
            pass
        try:
            return (1, float(h.get("InstanceNumber")), s.index, str(s.path))
        except Exception:
            return (2, 0.0, s.index, str(s.path))

    return sorted(slices, key=position)


def frames_text(chosen: list[int], total: int, is_multiframe: bool) -> str:
    """Which frames/slices were used, e.g. 'frame 1 of 1', 'montage of 9 of 30 frames (2,6,...)'."""
    what = "frame" if is_multiframe or total == 1 else "slice"
    if total == 1:
        return "frame 1 of 1"
    picked = ",".join(str(i + 1) for i in chosen)
    if len(chosen) == 1:
        return f"{what} {picked} of {total}"
    return f"montage of {len(chosen)} of {total} {what}s ({picked})"


def to_image(unit: np.ndarray, limit: int) -> Image.Image:
    """0..1 gray (H, W) or RGB (H, W, 3) -> 8-bit RGB image, longest side at most limit."""
    arr = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L").convert("RGB")
    if max(img.size) > limit:
        img.thumbnail((limit, limit), Image.Resampling.LANCZOS)
    return img


def montage(units: list[np.ndarray]) -> Image.Image:
    """Near-square sheet of tiles (each at most TILE_SIDE), centred in equal cells, row by row."""
    tiles = [to_image(u, TILE_SIDE) for u in units]
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
