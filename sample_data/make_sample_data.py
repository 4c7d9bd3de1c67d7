"""Generate sample_data/studies/: small synthetic chest radiograph studies (deterministic bytes).

Run: python sample_data/make_sample_data.py [--out sample_data/studies]

Everything is synthetic: the pictures are drawn from ellipses and bands (lungs dark, mediastinum,
spine and ribs bright), the identifiers are obviously fake (DEMO^...), and the UIDs are derived
from fixed strings, so re-running produces identical files.

Layout:
  study_001_pa/            CR PA, MONOCHROME2, 12-bit, WindowCenter/Width, PatientAge 063Y
  study_002_pa_lateral/    DX PA + LL (two images, one study), explicit VR little endian
  study_003_mono1/         CR AP, MONOCHROME1 (high values are dark), RLE lossless
  study_004_rescale/       DX PA with RescaleSlope/Intercept, PixelPaddingValue, no window
                           (age only from PatientBirthDate + StudyDate)
  loose_chest_pa.dcm       a study file directly in the batch root
  png_study_001/chest.png  8-bit PNG with chest.json sidecar (age, sex, indication, view)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

SIDE = 320
CR_SOP = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix


def uid(*parts: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["medvlm-sample", *parts])


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blur(img: np.ndarray, passes: int = 3) -> np.ndarray:
    out = img
    for _ in range(passes):
        pad = np.pad(out, 1, mode="edge")
        out = (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] + 4 * pad[1:-1, 1:-1]) / 8.0
    return out


def frontal(seed: int, side: int = SIDE) -> np.ndarray:
    """0..1 'display' image of a frontal chest film (1 = bright/dense)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    img = np.zeros((side, side))
    body = _ellipse(yy, xx, 0.58, 0.5, 0.55, 0.44)
    img[body] = 0.55
    jitter = rng.uniform(-0.015, 0.015, size=4)
    lung_r = _ellipse(yy, xx, 0.47 + jitter[0], 0.31, 0.27, 0.13)
    lung_l = _ellipse(yy, xx, 0.47 + jitter[1], 0.69, 0.27, 0.13)
    img[lung_r | lung_l] = 0.18
    # ribs: curved bands across each lung field
    for k in range(8):
        y0 = 0.27 + k * 0.05
        band = np.abs(yy - (y0 + 0.35 * (xx - 0.5) ** 2)) < 0.009
        img[band & (lung_r | lung_l)] += 0.16
    img[_ellipse(yy, xx, 0.42, 0.5, 0.22, 0.07)] = 0.72  # mediastinum
    img[_ellipse(yy, xx, 0.62 + jitter[2], 0.56, 0.11, 0.13 + jitter[3])] = 0.7  # heart
    img[(np.abs(xx - 0.5) < 0.028) & body] = 0.85  # spine
    img[(yy > 0.72) & body & ~(lung_r | lung_l)] = np.maximum(img[(yy > 0.72) & body & ~(lung_r | lung_l)], 0.62)
    for cx in (0.36, 0.64):  # clavicles
        img[(np.abs(yy - (0.2 + 0.25 * (xx - cx) ** 2)) < 0.012) & (np.abs(xx - cx) < 0.15)] = 0.8
    img = _blur(img) + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1)


def lateral(seed: int, side: int = SIDE) -> np.ndarray:
    """0..1 'display' image of a lateral chest film."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    img = np.zeros((side, side))
    body = _ellipse(yy, xx, 0.58, 0.5, 0.55, 0.36)
    img[body] = 0.55
    lung = _ellipse(yy, xx, 0.48, 0.5, 0.3, 0.25)
    img[lung] = 0.2
    img[_ellipse(yy, xx, 0.6, 0.42, 0.13, 0.12)] = 0.66  # heart, anterior
    img[(np.abs(xx - 0.78) < 0.035) & body] = 0.85  # spine, posterior
    img[(np.abs(xx - 0.2) < 0.015) & (yy > 0.3) & (yy < 0.7)] = 0.78  # sternum
    img[(yy > 0.75) & body] = np.maximum(img[(yy > 0.75) & body], 0.62)
    img = _blur(img) + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1)


def _base(study: str, series: str, instance: int, *, modality: str, name: str, pid: str, sex: str,
          view: str, age: str | None, birth: str | None, description: str, reason: str | None) -> Dataset:
    sop_class = CR_SOP if modality == "CR" else DX_SOP
    sop_uid = uid(study, series, str(instance))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDVLM_SAMPLE"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"DEMOACC{instance:02d}{pid[-4:]}"
    ds.Modality = modality
    ds.Manufacturer = "MEDVLM SYNTHETIC"
    ds.InstitutionName = "DEMO GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.StudyDescription = description
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = name
    ds.PatientID = pid
    if birth:
        ds.PatientBirthDate = birth
    ds.PatientSex = sex
    if age:
        ds.PatientAge = age
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    if reason:
        ds.ReasonForStudy = reason
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(study, series)
    ds.StudyID = "1"
    ds.SeriesNumber = int(series[-1]) if series[-1].isdigit() else 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"] if view != "LL" else ["A", "F"]
    ds.SamplesPerPixel = 1
    ds.Rows = SIDE
    ds.Columns = SIDE
    ds.PixelSpacing = [1.2, 1.2]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _stored(display: np.ndarray, *, invert: bool = False, top: int = 4095) -> np.ndarray:
    values = (1.0 - display) if invert else display
    return np.rint(values * (top - 200) + 100).astype(np.uint16)


def _write(ds: Dataset, pixels: np.ndarray, path: Path, *, photometric: str = "MONOCHROME2", rle: bool = False) -> None:
    ds.PhotometricInterpretation = photometric
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make(out: Path) -> list[Path]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written: list[Path] = []

    # 1: CR PA with a header window
    ds = _base("s1", "s1se1", 1, modality="CR", name="DEMO^ALPHA", pid="DEMO-0001", sex="M", view="PA",
               age="063Y", birth=None, description="CHEST PA", reason="Chronic cough, rule out mass")
    ds.WindowCenter = 2048
    ds.WindowWidth = 3600
    path = out / "study_001_pa" / "IM0001.dcm"
    _write(ds, _stored(frontal(1)), path)
    written.append(path)

    # 2: DX PA + lateral in one study folder
    for i, (view, img) in enumerate((("PA", frontal(2)), ("LL", lateral(2))), start=1):
        ds = _base("s2", f"s2se{i}", i, modality="DX", name="DEMO^BRAVO", pid="DEMO-0002", sex="F",
                   view=view, age="047Y", birth=None, description="CHEST 2 VIEWS", reason="Shortness of breath")
        ds.WindowCenter = [2048, 1800]
        ds.WindowWidth = [3800, 3000]
        path = out / "study_002_pa_lateral" / f"IM000{i}.dcm"
        _write(ds, _stored(img), path)
        written.append(path)

    # 3: MONOCHROME1 (stored bright = displayed dark), RLE compressed
    ds = _base("s3", "s3se1", 1, modality="CR", name="DEMO^CHARLIE", pid="DEMO-0003", sex="M", view="AP",
               age="078Y", birth=None, description="CHEST AP PORTABLE", reason="Fever, ? pneumonia")
    ds.WindowCenter = 2048
    ds.WindowWidth = 4000
    path = out / "study_003_mono1" / "IM0001.dcm"
    _write(ds, _stored(frontal(3), invert=True), path, photometric="MONOCHROME1", rle=True)
    written.append(path)

    # 4: rescale slope/intercept, padding border, no window (percentile); age from birth date
    ds = _base("s4", "s4se1", 1, modality="DX", name="DEMO^DELTA", pid="DEMO-0004", sex="F", view="PA",
               age=None, birth="19700301", description="CHEST PA", reason=None)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    ds.RescaleType = "US"
    stored = _stored(frontal(4), top=2047)
    stored[:, :12] = 0  # collimator border stored as padding
    stored[:, -12:] = 0
    ds.PixelPaddingValue = 0
    path = out / "study_004_rescale" / "IM0001.dcm"
    _write(ds, stored, path)
    written.append(path)

    # 5: a loose study file at the top level
    ds = _base("s5", "s5se1", 1, modality="CR", name="DEMO^ECHO", pid="DEMO-0005", sex="M", view="PA",
               age="035Y", birth=None, description="CHEST PA", reason="Pre-employment screening")
    ds.WindowCenter = 2048
    ds.WindowWidth = 3800
    path = out / "loose_chest_pa.dcm"
    _write(ds, _stored(frontal(5)), path)
    written.append(path)

    # 6: PNG with a JSON sidecar
    png = out / "png_study_001" / "chest.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(np.rint(frontal(6) * 255).astype(np.uint8), "L").save(png, optimize=False)
    sidecar = png.with_suffix(".json")
    sidecar.write_text(json.dumps({"age": 52, "sex": "F", "view": "PA", "indication": "Chest pain after fall"},
                                  indent=2, sort_keys=True) + "\n")
    written += [png, sidecar]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "studies")
    args = parser.parse_args()
    files = make(args.out)
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {total / 1024:.0f} KiB, under {args.out}")


if __name__ == "__main__":
    main()
