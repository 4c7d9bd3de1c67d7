"""Write a folder of deliberately broken inputs for ingest tests and tests/bench/ingest_report.py.

Run: python sample_data/make_bad_files.py OUT_DIR

Every case is built in code (pydicom datasets from numpy, raw bytes), except copies of pydicom's
bundled test files where a real file shows the problem better (SR, truncated pixel data).
make_bad_files() returns {relative path: substring expected in the ingest reason}.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MPEG2MPML,
    generate_uid,
)

CR_SOP = "1.2.840.10008.5.1.4.1.1.1"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
PDF_SOP = "1.2.840.10008.5.1.4.1.1.104.1"
KO_SOP = "1.2.840.10008.5.1.4.1.1.88.59"


def _uid(*parts: str) -> str:
    return generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["medvlm-bad", *parts])


def image_dataset(name: str, *, modality: str = "CR", rows: int = 64, cols: int = 64, body: str = "CHEST",
                  sop: str = CR_SOP, ts: str = ExplicitVRLittleEndian, pixels: bool = True) -> Dataset:
    """A small valid 16-bit grayscale image dataset with fake identifiers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = _uid(name, "sop")
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(name, "study")
    ds.SeriesInstanceUID = _uid(name, "series")
    ds.Modality = modality
    ds.BodyPartExamined = body
    ds.PatientName = "DEMO^BADFILE"
    ds.PatientID = "DEMO-BAD"
    ds.PatientAge = "050Y"
    ds.PatientSex = "O"
    ds.ViewPosition = "PA" if modality in ("CR", "DX") else ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if pixels:
        yy, xx = np.mgrid[0:rows, 0:cols]
        ds.PixelData = ((yy * 4095) // max(rows - 1, 1)).astype(np.uint16).tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares a huge bilevel image (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def make_bad_files(out: Path) -> dict[str, str]:
    """Write the broken cases under out; return {relative path: expected reason substring}."""
    out.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    (out / "zero_byte.dcm").write_bytes(b"")
    expect["zero_byte.dcm"] = "empty file"

    (out / "not_dicom.dcm").write_text("this is a note, not an image\n" * 20)
    expect["not_dicom.dcm"] = "not a DICOM file"

    (out / "random.bin").write_bytes(bytes(range(256)) * 4)
    expect["random.bin"] = "not DICOM or a supported image"

    good = io.BytesIO()
    image_dataset("trunc-header").save_as(good, enforce_file_format=True)
    (out / "truncated_header.dcm").write_bytes(good.getvalue()[:300])
    expect["truncated_header.dcm"] = "truncated"

    ds = image_dataset("no-preamble", ts=ImplicitVRLittleEndian)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    del ds.file_meta
    write_dataset(buf, ds)  # raw dataset: no 128-byte preamble, no DICM, no file meta
    (out / "no_preamble.dcm").write_bytes(buf.getvalue())
    expect["no_preamble.dcm"] = "OK"

    ds = image_dataset("short-pixels")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    _save(ds, out / "short_pixels.dcm")
    expect["short_pixels.dcm"] = "shorter than declared"

    ds = image_dataset("mpeg2", ts=MPEG2MPML, pixels=False)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    _save(ds, out / "unsupported_mpeg2.dcm")
    expect["unsupported_mpeg2.dcm"] = "unsupported transfer syntax"

    ds = image_dataset("bomb", rows=60000, cols=60000, pixels=False)
    ds.PixelData = b"\x00" * 128
    _save(ds, out / "bomb_header.dcm")
    expect["bomb_header.dcm"] = "image too large"

    (out / "bomb.png").write_bytes(bomb_png())
    expect["bomb.png"] = "image too large"

    ds = image_dataset("bad-jpeg", ts=JPEGBaseline8Bit, pixels=False)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + b"\x13" * 200 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    _save(ds, out / "corrupt_jpeg.dcm")
    expect["corrupt_jpeg.dcm"] = "pixel decoding failed"

    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1)), "L").save(png, format="PNG")
    (out / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    expect["truncated.png"] = "truncated"

    # non-image objects: a real SR, a key object selection, an encapsulated PDF (one study folder)
    sr_study = out / "sr_only"
    sr_study.mkdir(exist_ok=True)
    sr = pydicom.dcmread(pydicom.data.get_testdata_file("test-SR.dcm", download=False))
    sr.save_as(sr_study / "report.dcm")
    ko = image_dataset("sr-only", modality="KO", sop=KO_SOP, pixels=False)
    ko.StudyInstanceUID = sr.StudyInstanceUID
    for kw in ("Rows", "Columns", "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated",
               "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ko, kw)
    _save(ko, sr_study / "key_objects.dcm")
    expect["sr_only"] = "no image"

    pdf = image_dataset("pdf", modality="DOC", sop=PDF_SOP, pixels=False)
    for kw in ("Rows", "Columns", "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated",
               "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(pdf, kw)
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    _save(pdf, out / "report_pdf.dcm")
    expect["report_pdf.dcm"] = "no image"

    # real truncated file from pydicom: header fine, pixel data cut short
    trunc = pydicom.data.get_testdata_file("MR_truncated.dcm", download=False)
    (out / "mr_truncated.dcm").write_bytes(Path(trunc).read_bytes())
    expect["mr_truncated.dcm"] = "shorter than declared"

    # an unsupported modality with a real image (ultrasound, palette colour)
    us = pydicom.data.get_testdata_file("examples_palette.dcm", download=False)
    (out / "us_palette.dcm").write_bytes(Path(us).read_bytes())
    expect["us_palette.dcm"] = "unsupported modality US"

    # a non-chest radiograph
    _save(image_dataset("knee", modality="DX", body="KNEE"), out / "knee_dx.dcm")
    expect["knee_dx.dcm"] = "only chest radiographs"

    # links: a folder linking to its parent, a link to itself, a dangling link
    loop = out / "loop_dir"
    loop.mkdir(exist_ok=True)
    _save(image_dataset("in-loop"), loop / "img.dcm")
    _symlink("..", loop / "parent_link")
    expect["loop_dir/parent_link"] = "symlink loop"
    _symlink("self_link.dcm", out / "self_link.dcm")
    expect["self_link.dcm"] = "symlink loop"
    _symlink("does_not_exist.dcm", out / "dangling.dcm")
    expect["dangling.dcm"] = "broken symlink"

    # unreadable permissions (only meaningful when not running as root)
    locked = out / "no_permission.dcm"
    _save(image_dataset("locked"), locked)
    os.chmod(locked, 0)
    expect["no_permission.dcm"] = "permission denied" if os.geteuid() != 0 else "OK"

    (out / "notes.txt").write_text("sidecar text files are ignored\n")
    return expect


def _symlink(target: str, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python sample_data/make_bad_files.py OUT_DIR")
    for rel, why in sorted(make_bad_files(Path(sys.argv[1])).items()):
        print(f"{rel}: expect {why}")
