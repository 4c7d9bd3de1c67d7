"""Headers are read once per run (discovery's summaries travel in the StudyRef) and image hashes are
the files' SHA-256 (a series: its sha256sum manifest). Datasets built in code, real pydicom reads."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pydicom

from medvlm.fileio import sha256_file
from medvlm.ingest import discover, load_study
from medvlm.ingest.headers import SUMMARY_KEYWORDS
from medvlm.ingest.privacy import PHI_KEYWORDS
from medvlm.ingest.types import HeaderSummary
from medvlm.records import Study, StudyRef, to_jsonable

PROJECT = Path(__file__).resolve().parents[1]
SECRET = b"3" * 64
_spec = importlib.util.spec_from_file_location("make_bad_files", PROJECT / "sample_data" / "make_bad_files.py")
BAD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BAD)  # type: ignore[union-attr]


def write_batch(root: Path) -> None:
    """A 12-slice CT series (one study) and a PA + lateral chest study."""
    for i in range(12):
        ds = BAD.image_dataset(f"ct-{i}", modality="CT", body="CHEST", sop=BAD.CT_SOP)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = BAD._uid("ct-study"), BAD._uid("ct-series")
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, -2.5 * i]
        ds.InstanceNumber = 12 - i
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PatientBirthDate, ds.StudyDate = "19600101", "20240301"
        del ds.PatientAge
        ds.PixelData = np.full((64, 64), 1024 + 40 + 10 * i, np.uint16).tobytes()
        (root / "ct").mkdir(parents=True, exist_ok=True)
        ds.save_as(root / "ct" / f"{i:03d}.dcm", enforce_file_format=True)
    for name, view in (("pa", "PA"), ("lat", "LL")):
        ds = BAD.image_dataset(f"chest-{name}")
        ds.StudyInstanceUID = BAD._uid("chest-study")
        ds.ViewPosition = view
        (root / "chest").mkdir(parents=True, exist_ok=True)
        ds.save_as(root / "chest" / f"{name}.dcm", enforce_file_format=True)


@pytest.fixture
def header_reads(monkeypatch):
    """Counts real pydicom reads by kind (the reads themselves are unchanged)."""
    counts = {"header": 0, "full": 0}
    real = pydicom.dcmread

    def counting(*args, **kwargs):
        counts["header" if kwargs.get("stop_before_pixels") else "full"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    return counts


def comparable(study: Study) -> tuple:
    """Everything a Study carries into a report (images as pixels)."""
    return (study.context, study.notes, study.phi,
            [(i.source, i.sha256, i.original_shape, i.windowing, i.frames, i.view, i.transfer_syntax,
              i.series_description, np.asarray(i.image).tobytes()) for i in study.images])


def test_load_reads_no_header_that_discovery_read(tmp_path: Path, header_reads) -> None:
    write_batch(tmp_path)
    refs = {r.source: r for r in discover(tmp_path, SECRET)}
    assert header_reads == {"header": 14, "full": 0}  # every file's header, once
    ct, chest = refs["ct"], refs["chest"]
    assert len(ct.headers) == 12 and all(isinstance(h, HeaderSummary) for h in ct.headers)
    studies = {name: load_study(ref, "auto", root=tmp_path) for name, ref in refs.items()}
    assert header_reads == {"header": 14, "full": 9 + 2}  # pixels only: 9 montage slices, PA + lateral
    assert "montage of 9 of 12 slices" in studies["ct"].images[0].frames
    assert studies["ct"].context.age_years == 64  # from birth and study date, neither kept in the summary
    assert [i.view for i in studies["chest"].images] == ["PA", "LAT"]

    # a ref made elsewhere (no summaries) reads the headers itself and gives the same study
    for name, ref in (("ct", ct), ("chest", chest)):
        bare = StudyRef(ref.key, ref.source, ref.files, ref.uid)
        assert bare == ref  # summaries do not take part in a ref's identity
        assert comparable(load_study(bare, "auto", root=tmp_path)) == comparable(studies[name])


def test_a_file_changed_since_discovery_is_read_again(tmp_path: Path, header_reads) -> None:
    write_batch(tmp_path)
    ref = next(r for r in discover(tmp_path, SECRET) if r.source == "chest")
    lateral = tmp_path / "chest" / "lat.dcm"
    ds = pydicom.dcmread(lateral)
    ds.ViewPosition = "AP"
    ds.save_as(lateral, enforce_file_format=True)
    os.utime(lateral, ns=(1, 1))  # a different modification time whatever the clock's resolution
    before = header_reads["header"]
    study = load_study(ref, "chest_xray", root=tmp_path)
    assert header_reads["header"] == before + 1  # only the changed file
    # the summary said lateral (PA + LAT); the file now says AP: one frontal used, the other noted
    assert [i.view for i in study.images] == ["PA"] and "1 more image file(s) not used (views: AP)" in study.notes


def test_summaries_are_small_picklable_and_hold_no_identifiers(tmp_path: Path) -> None:
    write_batch(tmp_path)
    ref = next(r for r in discover(tmp_path, SECRET) if r.source == "ct")
    back = pickle.loads(pickle.dumps(ref))
    assert back == ref and back.headers == ref.headers
    assert len(pickle.dumps(ref)) < 4000  # 12 files
    keys = {k for h in ref.headers for k, _ in h.values}
    assert keys <= set(SUMMARY_KEYWORDS) and not keys & set(PHI_KEYWORDS)
    text = repr(to_jsonable(ref.headers))
    ds = pydicom.dcmread(ref.files[0], stop_before_pixels=True)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID"):
        assert str(ds.data_element(kw).value) not in text, kw
    assert "StudyInstanceUID" not in repr(ref)  # summaries stay out of a ref's repr (logs)


def test_include_phi_still_reports_the_identifiers(tmp_path: Path) -> None:
    write_batch(tmp_path)
    ref = next(r for r in discover(tmp_path, SECRET) if r.source == "chest")
    study = load_study(ref, "auto", include_phi=True, root=tmp_path)
    assert study.phi["PatientName"] == "DEMO^BADFILE" and study.phi["StudyInstanceUID"] == BAD._uid("chest-study")


def test_image_hash_is_the_file_hash_or_the_series_manifest_hash(tmp_path: Path) -> None:
    write_batch(tmp_path)
    studies = {r.source: load_study(r, "auto", root=tmp_path) for r in discover(tmp_path, SECRET)}
    pa = studies["chest"].images[0]
    assert pa.source == "chest/pa.dcm" and pa.sha256 == sha256_file(tmp_path / "chest" / "pa.dcm")
    series = studies["ct"].images[0]
    assert series.source == "ct"
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum (coreutils) not installed")
    names = sorted(p.name for p in (tmp_path / "ct").iterdir())
    listing = subprocess.run(["sha256sum", *names], cwd=tmp_path / "ct", capture_output=True, check=True).stdout
    manifest = subprocess.run(["sha256sum"], input=listing, capture_output=True, check=True).stdout.split()[0]
    assert series.sha256 == manifest.decode()
