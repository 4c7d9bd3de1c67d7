"""Per-study warning capture is per thread: decoding several studies at once while reports render
(real WeasyPrint) and other threads warn puts every note on its own study and loses nothing."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medvlm.ingest import discover, load_study
from medvlm.ingest.capture import captured
from medvlm.records import Study, StudyRef
from medvlm.report.write import render_study_files
from report_support import make_report

PROJECT = Path(__file__).resolve().parents[1]
SECRET = b"2" * 64
_spec = importlib.util.spec_from_file_location("make_bad_files", PROJECT / "sample_data" / "make_bad_files.py")
BAD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BAD)  # type: ignore[union-attr]


def padding_note(n: int) -> str:
    """pydicom's warning (and log record) for a file whose pixel data carries n bytes too many."""
    return f"contains {n} bytes of excess padding"


def write_padded_studies(root: Path, count: int) -> dict[str, int]:
    """One study folder per padding size (2, 4, 6... bytes): source -> padding; every load warns differently."""
    out = {}
    for i in range(count):
        ds = BAD.image_dataset(f"capture-{i}")
        pad = 2 * (i + 1)
        ds.PixelData = ds.PixelData + b"\x00" * pad
        folder = root / f"study{i:02d}"
        folder.mkdir(parents=True)
        ds.save_as(folder / "image.dcm", enforce_file_format=True)
        out[f"study{i:02d}/image.dcm"] = pad
    return out


def test_concurrent_decoding_and_rendering_keep_notes_apart(tmp_path: Path, caplog) -> None:
    pads = write_padded_studies(tmp_path, 8)
    refs: list[StudyRef] = [r for r in discover(tmp_path, SECRET) if isinstance(r, StudyRef)]
    assert sorted(r.source for r in refs) == sorted(pads)
    doc, thumbs = make_report()
    rendering = threading.Event()
    done = threading.Event()
    emitted: list[str] = []  # markers warned/logged by the threads that are not decoding
    pdfs: list[bytes] = []

    def render_reports() -> None:
        """The render thread: real WeasyPrint PDFs, with warnings of its own before and after each."""
        try:
            for k in range(2):
                marker = f"render-thread marker {k}"
                emitted.append(marker)
                warnings.warn(marker, UserWarning)
                rendering.set()
                pdfs.append(render_study_files(doc, thumbs, pdf=True)["report.pdf"])
                emitted.append(marker + " log")
                logging.getLogger("PIL.render").warning(marker + " log")
        finally:
            done.set()

    def chatter() -> None:
        """Another thread (think: the model thread) warning and logging through pydicom's logger."""
        k = 0
        while not done.is_set():
            marker = f"model-thread marker {k}"
            emitted.extend([marker, marker + " log"])
            warnings.warn(marker, RuntimeWarning)
            logging.getLogger("pydicom").warning(marker + " log")
            k += 1
            time.sleep(0.002)

    def decode(start: int) -> list[tuple[str, Study]]:
        """A decoding thread: loads every study (from its own offset) until the renders are done, twice at least."""
        rendering.wait(timeout=60)
        got, rounds = [], 0
        while rounds < 2 or not done.is_set():
            for j in range(len(refs)):
                ref = refs[(start + j) % len(refs)]
                got.append((ref.source, load_study(ref, "auto", root=tmp_path)))
            rounds += 1
        return got

    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(5) as pool:
            decoders = [pool.submit(decode, start) for start in (0, 3, 5)]
            noise = pool.submit(chatter)
            render = pool.submit(render_reports)
            render.result(timeout=300)
            noise.result(timeout=60)
            loads = [item for d in decoders for item in d.result(timeout=300)]

    assert len(pdfs) == 2 and all(p.startswith(b"%PDF") for p in pdfs)
    assert len(loads) >= 2 * 3 * len(refs)
    for source, study in loads:
        assert isinstance(study, Study), (source, study)
        own = [n for n in study.notes if "excess padding" in n]
        assert own == [f"{source}: The pixel data is {8192 + pads[source]} bytes long, which indicates it "
                       f"{padding_note(pads[source])} to be removed"], (source, study.notes)
        assert not any("marker" in n for n in study.notes), (source, study.notes)
    # nothing the other threads said was taken by a capture: every warning and log record arrived
    warned = {str(w.message) for w in recorded}
    logged = {r.getMessage() for r in caplog.records}
    missing = [m for m in emitted if m not in (logged if m.endswith(" log") else warned)]
    assert not missing, missing[:5]
    assert not any("excess padding" in m for m in warned | logged)  # and no decoding warning escaped


def test_capture_belongs_to_the_thread_that_opened_it() -> None:
    inside, release = threading.Event(), threading.Event()
    notes: list[str] = []

    def holder() -> None:
        with captured(notes):
            inside.set()
            release.wait(timeout=30)
            warnings.warn("from the capturing thread")

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(timeout=30)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        warnings.warn("from another thread")
        release.set()
        thread.join(timeout=30)
    assert notes == ["from the capturing thread"]
    assert [str(w.message) for w in recorded] == ["from another thread"]


def test_outside_a_capture_warnings_keep_their_filters_and_origin() -> None:
    with captured([]):
        pass  # the hooks are installed now
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        warnings.warn("where am I", stacklevel=1)
    assert recorded[0].filename == __file__  # the wrapper is not blamed for the caller's warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            warnings.warn("filters still apply outside a capture")
        notes: list[str] = []
        with captured(notes):
            warnings.warn("inside, filters do not turn this into an error")
    assert notes == ["inside, filters do not turn this into an error"]


def test_nested_captures_and_log_records(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    outer: list[str] = []
    inner: list[str] = []
    with captured(outer):
        with captured(inner):
            warnings.warn("a warning goes to the innermost capture")
            logging.getLogger("pydicom").warning("a log record goes to every open capture")
            logging.getLogger("PIL.PngImagePlugin").info("below WARNING: dropped, as before")
    assert inner == ["a warning goes to the innermost capture", "a log record goes to every open capture"]
    assert outer == ["a log record goes to every open capture"]
    assert not caplog.records  # captured records do not also reach the root handlers
    logging.getLogger("PIL.PngImagePlugin").warning("outside a capture it propagates")
    logging.getLogger("PIL.PngImagePlugin").info("at every level")
    assert [r.getMessage() for r in caplog.records] == ["outside a capture it propagates", "at every level"]


def test_notes_are_scrubbed() -> None:
    notes: list[str] = []
    with captured(notes):
        warnings.warn("value 'DOE^JOHN' for 1.2.840.113619.2.55.3 is odd")
    assert notes == ["value '…' for <uid> is odd"]

