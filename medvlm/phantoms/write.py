"""Write phantom studies as DICOM (CR/DX, MONOCHROME1/2, rescale, padding, RLE or JPEG 2000) or PNG, plus truth.csv.

Identifiers are synthetic and obviously so (PHANTOM^P00012), UIDs are derived from (seed, index)
under pydicom's UID root, and nothing depends on the clock, so the same seed gives byte-identical
files.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from .render import render_view
from .spec import PhantomStudy, sample_study

CR_SOP = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
TRUTH_NAME = "truth.csv"
TRUTH_COLUMNS = ("study", "findings", "details")
FILM_HEIGHT_MM = 430.0


def uid(study: PhantomStudy, *parts: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["medvlm-phantom", str(study.seed), str(study.index), *parts])


def image_shape(study: PhantomStudy, view: str, size: int) -> tuple[int, int]:
    """(rows, cols) of one view: `size` rows, columns from the film's aspect ratio."""
    aspect = 1.0 if view == "LL" else study.anatomy.aspect
    return size, max(16, int(round(size * aspect)))


def _birth_date(study: PhantomStudy) -> str:
    year = int(study.study_date[:4]) - study.age
    return f"{year}{study.study_date[4:]}"


def _header(study: PhantomStudy, view: str, number: int, rows: int, cols: int) -> Dataset:
    st = study.storage
    sop_class = CR_SOP if st.modality == "CR" else DX_SOP
    sop_uid = uid(study, view, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDVLM_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.StudyTime = f"{8 + study.index % 10:02d}{(study.index * 7) % 60:02d}00"
    ds.AccessionNumber = f"PHA{study.seed % 1000:03d}{study.index:06d}"
    ds.Modality = st.modality
    ds.Manufacturer = "MEDVLM PHANTOM"
    ds.ManufacturerModelName = "PROCEDURAL CHEST"
    ds.InstitutionName = "PHANTOM GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    views = " AND ".join("LATERAL" if v == "LL" else v for v in study.views)
    ds.StudyDescription = f"XR CHEST {views}"
    ds.SeriesDescription = f"CHEST {'LATERAL' if view == 'LL' else view}"
    ds.PatientName = f"PHANTOM^P{study.index:05d}"
    ds.PatientID = f"PH{study.seed}-{study.index:05d}"
    if study.index % 3 == 2:
        ds.PatientBirthDate = _birth_date(study)  # age only from birth date and study date
    else:
        ds.PatientBirthDate = ""
        ds.PatientAge = f"{study.age:03d}Y"
    ds.PatientSex = study.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ReasonForStudy = study.indication
    ds.KVP = 120 if view == "PA" else (90 if view == "AP" else 125)
    ds.StudyInstanceUID = uid(study, "study")
    ds.SeriesInstanceUID = uid(study, view, "series")
    ds.StudyID = str(study.index)
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "F"] if view == "LL" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.Rows = rows
    ds.Columns = cols
    spacing = round(FILM_HEIGHT_MM / rows, 4)
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = st.bits_stored
    ds.HighBit = st.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = st.photometric
    return ds


def _stored(study: PhantomStudy, display: np.ndarray, ds: Dataset, rng: np.random.Generator) -> np.ndarray:
    """Display density (0..1) -> stored pixel values, with the header's window, rescale and padding."""
    st = study.storage
    top = 2**st.bits_stored - 1
    lo, hi = 0.05 * top, 0.95 * top
    values = display if st.photometric == "MONOCHROME2" else 1.0 - display
    stored = np.rint(lo + values * (hi - lo)).astype(np.uint16)
    slope, intercept = st.rescale or (1.0, 0.0)
    if st.rescale:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if st.window == "header":
        width = (hi - lo) * float(rng.uniform(0.85, 1.08))
        center = 0.5 * (lo + hi) + (hi - lo) * float(rng.uniform(-0.05, 0.05))
        ds.WindowCenter = f"{center * slope + intercept:.1f}"
        ds.WindowWidth = f"{width * slope:.1f}"
    elif st.window == "placeholder" and st.bits_stored <= 14:
        ds.WindowCenter = "32768"
        ds.WindowWidth = "65536"  # a vendor default that shows every value: ingest falls back to percentiles
    if st.padding:
        rows, cols = stored.shape
        b = max(2, int(round((study.anatomy.collimation or 0.025) * rows)))
        stored[:, :b] = 0
        stored[:, cols - b:] = 0
        ds.PixelPaddingValue = 0
    return stored


def _dicom_bytes(study: PhantomStudy, view: str, number: int, size: int) -> bytes:
    rows, cols = image_shape(study, view, size)
    display = render_view(study, view, rows, cols)
    ds = _header(study, view, number, rows, cols)
    rng = np.random.default_rng([study.seed, study.index, 7, number])
    ds.PixelData = _stored(study, display, ds, rng).tobytes()
    if study.storage.compression == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif study.storage.compression == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png_bytes(study: PhantomStudy, size: int) -> bytes:
    view = study.views[0]
    rows, cols = image_shape(study, view, size)
    display = render_view(study, view, rows, cols)
    buf = io.BytesIO()
    Image.fromarray(np.rint(display * 255).astype(np.uint8), "L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def study_files(study: PhantomStudy, size: int) -> dict[str, bytes]:
    """Relative file name -> bytes for one study folder."""
    if study.storage.format == "png":
        sidecar = {"age": study.age, "sex": study.sex, "view": study.views[0], "indication": study.indication}
        return {
            "image.png": _png_bytes(study, size),
            "image.json": (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode(),
        }
    return {f"IM{n:04d}.dcm": _dicom_bytes(study, view, n, size) for n, view in enumerate(study.views, start=1)}


def truth_row(study: PhantomStudy) -> dict[str, str]:
    return {
        "study": study.name,
        "findings": ";".join(study.codes),
        "details": ";".join(f.describe() for f in study.findings),
    }


def write_truth(path: Path, studies: list[PhantomStudy]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for study in sorted(studies, key=lambda s: s.name):
            writer.writerow(truth_row(study))


def write_study(study: PhantomStudy, out: Path, size: int) -> list[Path]:
    folder = Path(out) / study.name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in study_files(study, size).items():
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written


def generate(out: Path, n: int, seed: int, size: int = 512, *, start: int = 0, png_share: float = 0.1,
             lateral_share: float = 0.25, on_study=None) -> list[PhantomStudy]:
    """Write studies start..start+n-1 of `seed` under `out` plus out/truth.csv; returns their specs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for index in range(start, start + n):
        study = sample_study(seed, index, png_share=png_share, lateral_share=lateral_share)
        write_study(study, out, size)
        studies.append(study)
        if on_study:
            on_study(study)
    write_truth(out / TRUTH_NAME, studies)
    return studies
