"""Generate sample_data/studies/: small synthetic chest radiograph studies (deterministic bytes).

Run: python sample_data/make_sample_data.py [--out sample_data/studies]

Everything is synthetic: the pictures are procedural phantoms from medvlm.phantoms (seed 4242,
the first phantom with each study's findings), the identifiers are obviously fake (DEMO^...), and
the UIDs are derived from fixed strings, so re-running produces identical files. truth.csv says
what each study shows (`medvlm evaluate runs/demo --truth sample_data/studies/truth.csv`).

Layout:
  study_001_pa/            CR PA, MONOCHROME2, 12-bit, WindowCenter/Width, PatientAge 063Y
  study_002_pa_lateral/    DX PA + LL (two images, one study), explicit VR little endian
  study_003_mono1/         CR AP, MONOCHROME1 (high values are dark), RLE lossless
  study_004_rescale/       DX PA with RescaleSlope/Intercept, PixelPaddingValue, no window
                           (age only from PatientBirthDate + StudyDate)
  loose_chest_pa.dcm       a study file directly in the batch root
  png_study_001/chest.png  8-bit PNG with chest.json sidecar (age, sex, indication, view)
  truth.csv                what each study shows (SHOWS below): study, findings, details
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medvlm.phantoms import TRUTH_NAME, PhantomStudy, render_view, sample_study, write_truth

SIDE = 320
PHANTOM_SEED = 4242  # neither the phantom model's training seed (1000) nor the benchmark's (7)
# What each sample study shows: phantom finding codes (the truth written to truth.csv).
SHOWS = {
    "study_001_pa": ("mass",),
    "study_002_pa_lateral": ("pleural_effusion", "cardiomegaly"),
    "study_003_mono1": ("consolidation",),
    "study_004_rescale": (),
    "loose_chest_pa.dcm": (),
    "png_study_001": ("pneumothorax",),
}
CR_SOP = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix


def uid(*parts: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["medvlm-sample", *parts])


def phantom(codes: tuple[str, ...]) -> PhantomStudy:
    """The first phantom of PHANTOM_SEED whose findings are exactly `codes` (no marker or collimation, so corners are air)."""
    for index in range(20000):
        study = sample_study(PHANTOM_SEED, index, png_share=0.0)
        if study.codes == codes:
            return replace(study, anatomy=replace(study.anatomy, marker=None, collimation=0.0, aspect=1.0))
    raise LookupError(f"no phantom of seed {PHANTOM_SEED} has exactly {codes}")


def picture(study: PhantomStudy, view: str) -> np.ndarray:
    """0..1 display image (1 = bright/dense) of one view, SIDE x SIDE."""
    return render_view(study, view, SIDE, SIDE)


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
    shows = {name: phantom(codes) for name, codes in SHOWS.items()}

    # 1: CR PA with a header window
    ds = _base("s1", "s1se1", 1, modality="CR", name="DEMO^ALPHA", pid="DEMO-0001", sex="M", view="PA",
               age="063Y", birth=None, description="CHEST PA", reason="Chronic cough, rule out mass")
    ds.WindowCenter = 2048
    ds.WindowWidth = 3600
    path = out / "study_001_pa" / "IM0001.dcm"
    _write(ds, _stored(picture(shows["study_001_pa"], "PA")), path)
    written.append(path)

    # 2: DX PA + lateral in one study folder
    two = shows["study_002_pa_lateral"]
    for i, (view, img) in enumerate((("PA", picture(two, "PA")), ("LL", picture(two, "LL"))), start=1):
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
    _write(ds, _stored(picture(shows["study_003_mono1"], "AP"), invert=True), path, photometric="MONOCHROME1", rle=True)
    written.append(path)

    # 4: rescale slope/intercept, padding border, no window (percentile); age from birth date
    ds = _base("s4", "s4se1", 1, modality="DX", name="DEMO^DELTA", pid="DEMO-0004", sex="F", view="PA",
               age=None, birth="19700301", description="CHEST PA", reason=None)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    ds.RescaleType = "US"
    stored = _stored(picture(shows["study_004_rescale"], "PA"), top=2047)
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
    _write(ds, _stored(picture(shows["loose_chest_pa.dcm"], "PA")), path)
    written.append(path)

    # 6: PNG with a JSON sidecar
    png = out / "png_study_001" / "chest.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(np.rint(picture(shows["png_study_001"], "PA") * 255).astype(np.uint8), "L").save(png, optimize=False)
    sidecar = png.with_suffix(".json")
    sidecar.write_text(json.dumps({"age": 52, "sex": "F", "view": "PA", "indication": "Chest pain after fall"},
                                  indent=2, sort_keys=True) + "\n")
    written += [png, sidecar]

    # What each study shows, in the phantom truth format (medvlm evaluate reads it).
    truth = out / TRUTH_NAME
    write_truth(truth, [replace(study, name=name) for name, study in shows.items()])
    written.append(truth)
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
