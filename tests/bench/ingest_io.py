"""How often ingest touches each input file: discover + load_study + the resume input hashes, as a batch does.

usage: python tests/bench/ingest_io.py [FOLDER...] [--ct-slices 120] [--size 256] [--repeat 3]

Besides the folders given, two CT series of --ct-slices single-frame files are written to a temp
folder: "synthetic" (datasets built in code with ~35 header elements, --size pixels square) and
"scanner_headers" (copies of pydicom's bundled CT_small.dcm, a real ~260-element scanner header,
128x128 pixels). Per folder it prints: DICOM header
reads (dcmread with stop_before_pixels) and full reads per DICOM file, opens per input file (all
kinds: header reads, pixel reads, hashing; counted with an audit hook), the median wall time of
the whole pass and of each phase (discover, load, hash) over --repeat runs (the per-process hash
memo is cleared before each run, as in a fresh batch), and the pickled size of the StudyRefs discovery hands to executors.
Figures are wall-clock on whatever machine runs it: compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medvlm import fileio
from medvlm.audit.fingerprint import input_hashes
from medvlm.ingest import discover, load_or_create_key, load_study
from medvlm.records import StudyError

COUNTS: Counter = Counter()
OPENS: Counter = Counter()
WATCHED: set[str] = set()


def _count_opens(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path in WATCHED:
            OPENS[path] += 1


def _counting_dcmread(real):
    def dcmread(*args, **kwargs):
        COUNTS["header" if kwargs.get("stop_before_pixels") else "full"] += 1
        return real(*args, **kwargs)

    return dcmread


def write_ct_series(folder: Path, n: int, size: int) -> Path:
    """n axial CT slices of one series, with the header elements a scanner writes most often."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.BodyPartExamined, ds.StudyDescription = "CT", "CHEST", "CT CHEST W/O CONTRAST"
        ds.SeriesDescription, ds.ProtocolName = "AXIAL 1.25mm", "CHEST ROUTINE"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = "BENCH^CT", "BENCH-1", "061Y", "F"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-180.0, -180.0, -1.25 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        body = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (0.4 * size) ** 2
        ds.PixelData = np.where(body, 1064 + (i % 7) * 10, 24).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{i:04d}.dcm", enforce_file_format=True)
    return folder


def write_scanner_series(folder: Path, n: int) -> Path | None:
    """n slices made from pydicom's bundled CT_small.dcm (a real scanner header of ~260 elements,
    private tags included), each with its own SOPInstanceUID, InstanceNumber and position."""
    template = get_testdata_file("CT_small.dcm", download=False)
    if template is None:
        print("pydicom's bundled CT_small.dcm is not available; scanner-header series skipped")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.0, -179.0, -6.0 - 5.0 * i]
        ds.save_as(folder / f"IM{i:04d}.dcm", enforce_file_format=True)
    return folder


def one_pass(root: Path, key: bytes) -> tuple[int, int, list[int], dict[str, float]]:
    """discover, load every study, hash its inputs (what RunAudit does).

    Returns (studies ok, not ok, pickled ref sizes, seconds per phase).
    """
    ok = bad = 0
    sizes: list[int] = []
    phases = {"discover": 0.0, "load": 0.0, "hash": 0.0}
    t0 = time.perf_counter()
    items = list(discover(root, key))
    phases["discover"] = time.perf_counter() - t0
    for item in items:
        if isinstance(item, StudyError):
            bad += 1
            continue
        sizes.append(len(pickle.dumps(item)))
        t0 = time.perf_counter()
        study = load_study(item, "auto", root=root)
        phases["load"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            input_hashes(item, root)
        except OSError:
            pass
        phases["hash"] += time.perf_counter() - t0
        ok += not isinstance(study, StudyError)
        bad += isinstance(study, StudyError)
    return ok, bad, sizes, phases


def measure(root: Path, key: bytes, repeat: int) -> None:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    WATCHED.clear()
    WATCHED.update(str(p) for p in files)
    WATCHED.update(str(p.resolve()) for p in files)
    n_dicom = sum(1 for p in files if p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".json", ".csv", ".txt"))
    times = []
    per_phase: dict[str, list[float]] = {}
    for _ in range(repeat):
        fileio._HASHES.clear()  # a fresh batch process starts with no remembered hashes
        COUNTS.clear()
        OPENS.clear()
        t0 = time.perf_counter()
        ok, bad, sizes, phases = one_pass(root, key)
        times.append(time.perf_counter() - t0)
        for name, secs in phases.items():
            per_phase.setdefault(name, []).append(secs)
    opened = [OPENS[str(p.resolve())] + (OPENS[str(p)] if str(p) != str(p.resolve()) else 0) for p in files]
    print(f"{root.name}: {ok} studies ok, {bad} not; {len(files)} files ({n_dicom} DICOM)")
    print(f"  header reads per DICOM file: {COUNTS['header'] / max(n_dicom, 1):.2f}   "
          f"full reads: {COUNTS['full']}")
    print(f"  opens per input file: mean {statistics.mean(opened):.2f}, max {max(opened)}")
    print(f"  wall: median {statistics.median(times) * 1000:.0f} ms over {repeat} runs "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); by phase, median ms: "
          + ", ".join(f"{name} {statistics.median(v) * 1000:.0f}" for name, v in per_phase.items()))
    if sizes:
        print(f"  pickled StudyRef: mean {statistics.mean(sizes):.0f} B, max {max(sizes)} B")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--ct-slices", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.addaudithook(_count_opens)
    pydicom.dcmread = _counting_dcmread(pydicom.dcmread)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = load_or_create_key(tmp / "out")
        folders = [f.resolve() for f in args.folders]
        if args.ct_slices > 0:
            folders.append(write_ct_series(tmp / "synthetic" / "ct_series", args.ct_slices, args.size).parent)
            scanner = write_scanner_series(tmp / "scanner_headers" / "ct_series", args.ct_slices)
            if scanner is not None:
                folders.append(scanner.parent)
        for folder in folders:
            if not folder.is_dir():
                print(f"{folder}: not a folder; skipped")
                continue
            measure(folder, key, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
