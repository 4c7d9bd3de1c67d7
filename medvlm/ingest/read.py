"""Reading DICOM files and deciding whether they can be decoded here: every failure is an IngestError
whose text is a one-line reason (empty, truncated, not DICOM, no image, missing decoder, too big...).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .capture import captured
from .privacy import scrub
from .types import MAX_FRAME_PIXELS, IngestError

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
IMAGE_SOP_ROOT = "1.2.840.10008.5.1.4.1.1."

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


def frame_count(header) -> int:
    """NumberOfFrames of a Dataset or HeaderSummary (1 when absent or invalid)."""
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
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
