"""discover(): grouping, ordering, nested folders, links (datasets built in code)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from medvlm.ingest import discover, load_study
from medvlm.records import Study, StudyError, StudyRef

PROJECT = Path(__file__).resolve().parents[1]
SECRET = b"1" * 64
_spec = importlib.util.spec_from_file_location("make_bad_files", PROJECT / "sample_data" / "make_bad_files.py")
BAD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BAD)  # type: ignore[union-attr]


def write(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def study_file(path: Path, study: str, series: str, instance: int, view: str = "PA") -> Path:
    ds = BAD.image_dataset(f"{study}-{series}-{instance}")
    ds.StudyInstanceUID = BAD._uid(study)
    ds.SeriesInstanceUID = BAD._uid(study, series)
    ds.ViewPosition = view
    ds.InstanceNumber = instance
    return write(ds, path)


def test_sample_data_discovery_is_sorted_and_complete() -> None:
    refs = list(discover(PROJECT / "sample_data" / "studies", SECRET))
    assert all(isinstance(r, StudyRef) for r in refs)
    sources = [r.source for r in refs]
    assert sources == sorted(sources)
    assert "study_002_pa_lateral" in sources and "loose_chest_pa.dcm" in sources
    two = next(r for r in refs if r.source == "study_002_pa_lateral")
    assert len(two.files) == 2 and two.uid and two.key.startswith("s-")
    assert all(Path(f).is_absolute() for r in refs for f in r.files)
    assert not any(os.path.isabs(r.source) for r in refs)


def test_nested_folders_group_by_study_uid(tmp_path: Path) -> None:
    # patient/study/series/instance layout with two studies below one patient folder
    study_file(tmp_path / "pat1" / "st1" / "se1" / "i1.dcm", "A", "1", 1, "PA")
    study_file(tmp_path / "pat1" / "st1" / "se2" / "i1.dcm", "A", "2", 1, "LL")
    study_file(tmp_path / "pat1" / "st2" / "se1" / "i1", "B", "1", 1)  # no extension
    study_file(tmp_path / "loose1.dcm", "C", "1", 1)
    study_file(tmp_path / "loose2.dcm", "C", "1", 2)
    refs = [r for r in discover(tmp_path, SECRET)]
    by_source = {r.source: r for r in refs}
    assert set(by_source) == {"loose1.dcm (+1 files)", "pat1/st1", "pat1/st2/se1/i1"}
    assert len(by_source["pat1/st1"].files) == 2 and len(by_source["loose1.dcm (+1 files)"].files) == 2
    study = load_study(by_source["pat1/st1"], "auto", root=tmp_path)
    assert isinstance(study, Study) and [i.view for i in study.images] == ["PA", "LAT"]


def test_rasters_alone_are_studies_and_ride_along_with_dicom(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    study_file(tmp_path / "s1" / "img.dcm", "D", "1", 1)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "s1" / "preview.png")
    refs = list(discover(tmp_path, SECRET))
    assert [r.source for r in refs] == ["a.png", "s1"]
    assert refs[0].key.startswith("r-")
    study = load_study(refs[1], "auto", root=tmp_path)
    assert isinstance(study, Study) and study.images[0].kind == "dicom"
    assert any("PNG/JPEG" in n for n in study.notes)


def test_same_uid_in_two_top_level_folders_gets_distinct_keys(tmp_path: Path) -> None:
    study_file(tmp_path / "x" / "1.dcm", "E", "1", 1)
    study_file(tmp_path / "y" / "2.dcm", "E", "1", 2)
    keys = [r.key for r in discover(tmp_path, SECRET)]
    assert len(keys) == 2 and keys[1] == keys[0] + "-2"


def test_links_and_unreadable_entries_do_not_stop_discovery(tmp_path: Path) -> None:
    study_file(tmp_path / "ok" / "1.dcm", "F", "1", 1)
    os.symlink("..", tmp_path / "ok" / "up")
    os.symlink(tmp_path / "ok", tmp_path / "ok_again")
    os.symlink("nowhere", tmp_path / "dangling.dcm")
    os.symlink("selfie", tmp_path / "selfie")
    items = list(discover(tmp_path, SECRET))
    errors = {i.ref.source: i for i in items if isinstance(i, StudyError)}
    refs = [i for i in items if isinstance(i, StudyRef)]
    assert len(refs) == 1
    assert "symlink loop" in errors["ok/up"].reason
    assert "broken symlink" in errors["dangling.dcm"].reason
    assert "symlink loop" in errors["selfie"].reason
    assert errors["ok_again"].status == "skipped"


def test_non_image_only_study_is_skipped_at_discovery(tmp_path: Path) -> None:
    BAD.make_bad_files(tmp_path / "bad")
    items = {(i.ref.source if isinstance(i, StudyError) else i.source): i for i in discover(tmp_path / "bad", SECRET)}
    sr = items["sr_only"]
    assert isinstance(sr, StudyError) and sr.status == "skipped" and "SR" in sr.reason
    os.chmod(tmp_path / "bad" / "no_permission.dcm", 0o600)


def test_discovery_reads_regular_files_inside_the_folder_only(tmp_path: Path) -> None:
    """Issue 16: links out of the folder are not followed (unless asked), specials are rows that are never
    opened, a medvlm run folder is not read, and a big tree reports progress."""
    discover_mod = importlib.import_module("medvlm.ingest.discover")  # the module (the package exports the function)

    root = tmp_path / "root"
    study_file(root / "zreal" / "1.dcm", "G", "1", 1)
    outside = tmp_path / "outside"
    study_file(outside / "2.dcm", "H", "1", 1)
    os.symlink(root / "zreal", root / "inside")  # a link inside the folder is followed (once)
    os.symlink(outside, root / "away")
    os.mkfifo(root / "pipe.dcm")
    (root / "runs" / "latest" / ".medvlm").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "runs" / "latest" / "image-1.png")
    (root / "old").mkdir()
    (root / "old" / "ledger.jsonl").write_text("")
    Image.new("L", (8, 8)).save(root / "old" / "image-1.png")
    items = list(discover(root, SECRET))
    errors = {i.ref.source: i for i in items if isinstance(i, StudyError)}
    refs = {i.source: i for i in items if isinstance(i, StudyRef)}
    assert set(refs) == {"inside/1.dcm"}
    assert errors["away"].status == "skipped" and "outside the studies folder" in errors["away"].reason
    assert errors["pipe.dcm"].status == "skipped" and errors["pipe.dcm"].ref.files == ()  # never hashed or opened
    assert errors["zreal"].status == "skipped"  # already scanned through the link
    assert set(errors) == {"away", "pipe.dcm", "zreal"}
    followed = [i for i in discover(root, SECRET, follow_links=True) if isinstance(i, StudyRef)]
    assert {r.source for r in followed} == {"inside/1.dcm", "away/2.dcm"}

    heard: list[int] = []
    old = discover_mod.STATUS_EVERY_S
    discover_mod.STATUS_EVERY_S = 0.0  # report at every entry, as a big tree would every few seconds
    try:
        list(discover(root, SECRET, on_scan=heard.append))
    finally:
        discover_mod.STATUS_EVERY_S = old
    assert heard and heard == sorted(heard) and heard[-1] >= 5


def test_non_utf8_names_get_stable_keys_and_escaped_sources(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    Image.new("L", (8, 8)).save(raw.decode("utf-8", "surrogateescape"))
    first = [i for i in discover(tmp_path, SECRET)]
    second = [i for i in discover(tmp_path, SECRET)]
    assert [r.source for r in first] == ["caf\\xe9.png"]
    assert first[0].key == second[0].key and first[0].source.encode("utf-8")


def test_a_series_in_a_non_utf8_folder_loads(tmp_path: Path) -> None:
    """A multi-file CT series with latin-1 folder and file names: its manifest hash and sources are written as text."""
    folder = (os.fsencode(tmp_path) + b"/s\xe9rie").decode("utf-8", "surrogateescape")
    for i in range(2):
        ds = BAD.image_dataset(f"ct-{i}", modality="CT")
        ds.StudyInstanceUID = BAD._uid("latin")
        ds.SeriesInstanceUID = BAD._uid("latin", "1")
        ds.InstanceNumber = i + 1
        write(ds, Path(folder) / (os.fsencode(f"{i}") + b"\xe9.dcm").decode("utf-8", "surrogateescape"))
    (ref,) = [r for r in discover(tmp_path, SECRET) if isinstance(r, StudyRef)]
    assert ref.source == "s\\xe9rie"
    study = load_study(ref, "auto", root=tmp_path)
    assert isinstance(study, Study), getattr(study, "reason", "")
    assert study.images[0].source == "s\\xe9rie" and len(study.images[0].sha256) == 64
