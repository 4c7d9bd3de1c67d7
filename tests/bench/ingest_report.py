"""Ingest report: run discover + load_study over folders and print what became of every study/file.

Usage:
  python tests/bench/ingest_report.py FOLDER [FOLDER...] [--modality auto] [--max-images 2] [--with-bad]
  --with-bad  also generate the broken inputs of sample_data/make_bad_files.py in a temp folder

Study lines:  STUDY <key> <source>: ok|skipped|error [stage] ...
File lines:   FILE <relative path>: ok + shape/photometric/windowing/frames, or the reason
(each DICOM/PNG file decoded on its own, so files that share a study are all exercised).
No identifiers are printed: keys are keyed hashes, paths are relative to the folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from medvlm.ingest import discover, load_or_create_key, load_study
from medvlm.ingest.dicom import IngestError, render_file
from medvlm.ingest.discover import relpath
from medvlm.ingest.raster import is_raster, render_raster
from medvlm.records import StudyError

PROJECT = Path(__file__).resolve().parents[2]


def _bad_folder(tmp: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_bad_files", PROJECT / "sample_data" / "make_bad_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = tmp / "bad_inputs"
    module.make_bad_files(out)
    return out


def report_folder(root: Path, key: bytes, modality: str, max_images: int) -> tuple[int, int, int]:
    ok = skipped = errors = 0
    print(f"== {root.name}/")
    for item in discover(root, key, modality):
        if isinstance(item, StudyError):
            print(f"STUDY {item.ref.key} {item.ref.source}: {item.status} [{item.stage}] {item.reason}")
            skipped += item.status == "skipped"
            errors += item.status == "error"
            continue
        t0 = time.perf_counter()
        study = load_study(item, modality, max_images=max_images, root=root)
        ms = (time.perf_counter() - t0) * 1000
        if isinstance(study, StudyError):
            print(f"STUDY {item.key} {item.source}: {study.status} [{study.stage}] {study.reason}")
            skipped += study.status == "skipped"
            errors += study.status == "error"
            continue
        ok += 1
        c = study.context
        print(f"STUDY {item.key} {item.source}: ok {len(study.images)} image(s) in {ms:.0f} ms; "
              f"{c.dicom_modality or 'raster'} age={c.age_years} sex={c.sex} view={c.view} body={c.body_part}")
        for im in study.images:
            print(f"    {im.source}: {im.image.size[0]}x{im.image.size[1]} from {im.original_shape} "
                  f"{im.photometric}; {im.windowing}; {im.frames}; view={im.view}")
        for note in study.notes:
            print(f"    note: {note}")
    return ok, skipped, errors


def report_files(root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = relpath(path, root)
        if path.suffix.lower() in (".json", ".csv", ".txt"):
            continue
        try:
            if is_raster(path):
                r = render_raster(path)
            else:
                r, _ = render_file(path)
            print(f"FILE {rel}: ok {r.original_shape} {r.photometric}; {r.windowing}; {r.frames}"
                  + (f"; notes: {' | '.join(r.notes)}" if r.notes else ""))
        except IngestError as exc:
            print(f"FILE {rel}: {exc}")
        except PermissionError:
            print(f"FILE {rel}: permission denied")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--modality", default="auto")
    parser.add_argument("--max-images", type=int, default=2)
    parser.add_argument("--with-bad", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = load_or_create_key(tmp / "out")
        folders = list(args.folders)
        if args.with_bad:
            folders.append(_bad_folder(tmp))
        totals = [0, 0, 0]
        for folder in folders:
            ok, skipped, errors = report_folder(folder.resolve(), key, args.modality, args.max_images)
            totals = [totals[0] + ok, totals[1] + skipped, totals[2] + errors]
            report_files(folder.resolve())
        print(f"== studies: {totals[0]} ok, {totals[1]} skipped, {totals[2]} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
