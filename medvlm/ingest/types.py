"""Types and limits shared by the ingest modules (DICOM and raster decoding, discovery, loading)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

MAX_FRAME_PIXELS = 64_000_000  # per frame; a larger header is treated as a decompression bomb
MAX_TILES = 9  # frames/slices of one stack shown in a montage
TILE_SIDE = 512  # longest side of one montage tile
MAX_SIDE = 2048  # longest side of a single image


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


@dataclass(frozen=True)
class HeaderSummary:
    """What load_study needs from one DICOM file's header, read once (by discovery) per run.

    Small, picklable and free of identifiers: it travels inside StudyRef.headers to whichever
    executor loads the study. `values` holds the elements of headers.SUMMARY_KEYWORDS that the file
    has, as plain Python values (str, int, float, tuples of them); get() reads them like Dataset.get.
    """

    path: str  # the file, as in StudyRef.files
    stamp: tuple[int, int]  # (size, mtime_ns) when read: a file changed since then is read again
    values: tuple[tuple[str, Any], ...]
    transfer_syntax: str | None  # its name, e.g. "JPEG 2000 Image Compression"
    non_image: str | None  # why the file holds no image for a model (SR, KO, PDF...), else None
    age_years: int | None  # PatientAge, else from birth and study dates (neither is kept)
    series: str | None  # opaque token equal for files of one SeriesInstanceUID (not the UID); None without one
    notes: tuple[str, ...] = ()  # remarks from reading it (force=True, scrubbed warnings)

    def get(self, keyword: str, default: Any = None) -> Any:
        for key, value in self.values:
            if key == keyword:
                return value
        return default

    def is_current(self) -> bool:
        """True while the file still has the size and modification time it had when summarised."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == self.stamp


@dataclass
class Slice:
    """One frame of one file, before decoding; header is a pydicom Dataset or a HeaderSummary."""

    path: Path
    header: Any
    index: int  # frame index inside the file (0-based)
