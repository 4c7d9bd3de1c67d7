"""DICOM files and stacks -> one 8-bit RGB image for the model, with how it was derived.

The jobs live apart: reading and decodability in read.py, pixel math in pixels.py, the CT window
table in ct_windows.py, frame choice and montage in montage.py, warning capture in capture.py.
This module puts them together: render_slices() for a study's stack, render_file() for one file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .capture import captured, dedupe
from .montage import frames_text, montage, select_indices, sort_slices, to_image
from .pixels import color_unit, gray_units, modality_values, mode_for
from .read import check_decodable, decode_frame, frame_count, header_problem, non_image_reason, read_dataset
from .types import MAX_SIDE, MAX_TILES, IngestError, Rendered, Slice

__all__ = ["render_slices", "render_file", "sort_slices", "Slice", "Rendered", "IngestError", "MAX_TILES"]


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
                units.append(color_unit(ds, raw))
            else:
                if raw.ndim != 2:
                    raise IngestError(f"unexpected pixel array shape {raw.shape} for grayscale image")
                raw_values.append((*modality_values(ds, raw), ds))
        windowing = "colour (RGB)" if mode == "color" else ""
        if mode != "color":
            units, windowing = gray_units(raw_values, mode)
    image = montage(units) if len(units) > 1 else to_image(units[0], limit=MAX_SIDE)
    ds0 = loaded.get(chosen[0].path, first)
    photometric = str(ds0.get("PhotometricInterpretation", "") or "") or None
    if mode == "color" and photometric and photometric != "RGB":
        windowing = f"{photometric} -> RGB"
    total = len(slices)
    frames = frames_text(chosen_idx, total, is_multiframe=frame_count(first) > 1)
    rows, cols = int(first.get("Rows")), int(first.get("Columns"))
    if total > 1:
        shape: tuple[int, ...] = (total, rows, cols)
    elif mode == "color":
        shape = (rows, cols, 3)
    else:
        shape = (rows, cols)
    return Rendered(image, shape, photometric, windowing, frames, dedupe(notes))


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
    out.notes = dedupe(notes + out.notes)
    return out, ds
