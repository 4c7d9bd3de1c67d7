"""Study discovery: walk a batch folder, read DICOM headers only, group files into studies.

Rules (deterministic, sorted by name at every level):
- Each top-level entry of the root is a unit, streamed in order: first the loose files at the top
  level (together), then each sub-folder (with everything below it). A unit is fully scanned
  before its studies are yielded, so a study whose files are spread over one sub-folder's nested
  patient/study/series folders is found whole.
- DICOM files (any name; header read with stop_before_pixels, force only when the preamble is
  missing) are grouped by StudyInstanceUID; a file without one is a study on its own. What
  load_study needs from each header travels in StudyRef.headers (headers.HeaderSummary: small,
  picklable, no identifiers), so a header is read once per run.
- PNG/JPEG files each form a study keyed by their relative path, unless they sit in a folder that
  holds DICOM files of exactly one study: then they ride along with that study (load_study prefers
  the DICOM images and notes the rasters).
- Groups whose every file is a non-image object (SR, KO, PR, SEG, PDF, RT...) are yielded as
  StudyError(status="skipped"); unreadable files as StudyError(stage="discover") with one line.
- Sidecars (.json/.csv/.txt/.jsonl...), hidden files and DICOMDIR indexes are not studies.
- One rule for what is read (_Scan.classify): regular files and folders only. A named pipe, socket
  or device is a skipped row that is never opened (reading one blocks forever). A symlink is
  followed only when its target lies inside the studies folder (follow_links=True: anywhere), a
  linked folder once; loops, broken links and unreadable folders become errors.
- A folder holding a medvlm run (ledger.jsonl or .medvlm/, see paths.RUN_MARKERS) is never read as
  studies: the default --out inside the studies folder is not read back on the next batch. A studies
  folder that is itself a run folder, or equal to --out, is a usage error (check_studies_folder).
- File names that are not valid UTF-8 are shown with \\xNN escapes (paths.display_path) in sources
  and reasons; keys hash the name's bytes, so they are stable.
- Keys: "s-" + hmac-sha256(secret, StudyInstanceUID)[:16]; raster studies "r-" + hmac of the
  relative path; unreadable files "f-" + hmac of the relative path. A StudyInstanceUID met again in
  a later unit gets the key with a "-2", "-3"... suffix (the units are yielded separately).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UsageProblem
from ..paths import RUN_MARKERS, display_path, is_run_folder
from ..records import StudyError, StudyRef
from .headers import read_header
from .privacy import path_key, study_key
from .raster import RASTER_SUFFIXES, is_raster
from .types import HeaderSummary, IngestError

# Files that accompany studies but are never studies themselves.
IGNORED_SUFFIXES = frozenset(
    {".json", ".jsonl", ".csv", ".tsv", ".txt", ".md", ".xml", ".yaml", ".yml", ".ini", ".log", ".html", ".htm",
     ".sha256", ".md5"}
)
IGNORED_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini", "lockfile", "version"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima", ""})
STATUS_EVERY_S = 2.0  # how often on_scan hears how many entries were listed


@dataclass
class _Header:
    path: Path
    rel: str
    uid: str | None
    summary: HeaderSummary


def relpath(path: Path, root: Path) -> str:
    """Path relative to the batch root, POSIX style (never absolute in outputs), always valid UTF-8."""
    return display_path(raw_relpath(path, root))


def raw_relpath(path: Path, root: Path) -> str:
    """The relative path as the file system names it (undecodable bytes as surrogate escapes): what keys hash."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return Path(path).name


def _file_error(path: Path, root: Path, secret: bytes, reason: str, status: str = "error", *,
                readable: bool = True) -> StudyError:
    """A discovery row for one entry; `readable` False for anything that is no regular file (never opened later)."""
    rel = relpath(path, root)
    files = (str(path),) if readable else ()
    ref = StudyRef(key=path_key(secret, raw_relpath(path, root), prefix="f-"), source=rel, files=files)
    return StudyError(ref=ref, stage="discover", reason=f"{rel}: {reason}", status=status)  # type: ignore[arg-type]


class _Scan:
    """One discovery pass: the batch root, the key secret, what was walked, and the status callback."""

    def __init__(self, root: Path, secret: bytes, follow_links: bool, on_scan: Callable[[int], None] | None):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.secret = secret
        self.follow_links = follow_links
        self.on_scan = on_scan
        self.seen: set[str] = {self.real_root}
        self.entries = 0
        self.reported = False  # on_scan was called (a big tree): it hears the final count too
        self._last_report = time.monotonic()

    def error(self, path: Path, reason: str, status: str = "error", readable: bool = True) -> StudyError:
        return _file_error(path, self.root, self.secret, reason, status, readable=readable)

    def tick(self) -> None:
        self.entries += 1
        if self.on_scan is not None and time.monotonic() - self._last_report >= STATUS_EVERY_S:
            self._last_report = time.monotonic()
            self.reported = True
            self.on_scan(self.entries)

    def inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def classify(self, path: Path, ancestors: frozenset[str]) -> tuple[str, str] | StudyError | None:
        """The one discovery rule for an entry: ("dir", realpath), ("file", path), an error row, or None (not read).

        Regular files and folders only; a link is followed only to a target inside the studies
        folder (any target with follow_links); never into a folder medvlm wrote a run into.
        """
        try:
            st = os.lstat(path)
        except OSError as exc:
            return self.error(path, _stat_reason(exc), readable=False)
        is_link = stat.S_ISLNK(st.st_mode)
        if is_link:
            try:
                real = os.path.realpath(path, strict=True)
                st = os.stat(real)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return self.error(path, "symlink loop", readable=False)
                if isinstance(exc, FileNotFoundError):
                    return self.error(path, "broken symlink", readable=False)
                return self.error(path, _stat_reason(exc), readable=False)
            except RuntimeError:
                return self.error(path, "symlink loop (cannot resolve)", readable=False)
            if stat.S_ISDIR(st.st_mode) and real in ancestors:
                return self.error(path, "symlink loop (link points to a parent folder); not followed", readable=False)
            if not self.follow_links and not self.inside(real):
                return self.error(path, "link points outside the studies folder; not followed", "skipped", readable=False)
        else:
            real = None
        if stat.S_ISDIR(st.st_mode):
            real = real or os.path.realpath(path)
            if is_run_folder(path):
                return None  # a medvlm output folder (e.g. the default --out inside the studies folder)
            if real in self.seen:
                return self.error(path, "folder already scanned through another link; not followed", "skipped", readable=False)
            self.seen.add(real)
            return ("dir", real)
        if stat.S_ISREG(st.st_mode):
            return ("file", str(path))
        return self.error(path, f"not a regular file ({_special_kind(st.st_mode)}); not read", "skipped", readable=False)

    def entries_of(self, folder: Path) -> list[os.DirEntry] | StudyError:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except PermissionError:
            return self.error(folder, "cannot list folder: permission denied", readable=False)
        except OSError as exc:
            return self.error(folder, f"cannot list folder: {exc.strerror or type(exc).__name__}", readable=False)

    def walk(self, folder: Path, ancestors: frozenset[str]) -> Iterator[Path | StudyError]:
        """Regular files below folder (sorted), errors as values."""
        entries = self.entries_of(folder)
        if isinstance(entries, StudyError):
            yield entries
            return
        for entry in entries:
            self.tick()
            path = Path(entry.path)
            kind = self.classify(path, ancestors)
            if kind is None:
                continue
            if isinstance(kind, StudyError):
                yield kind
            elif kind[0] == "dir":
                yield from self.walk(path, ancestors | {kind[1]})
            else:
                yield path


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file or folder"


def _stat_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.EACCES:
        return "cannot read: permission denied"
    return f"cannot stat: {exc.strerror or type(exc).__name__}"


def _is_ignored(path: Path) -> bool:
    return path.suffix.lower() in IGNORED_SUFFIXES or path.name.lower() in IGNORED_NAMES


def _source(paths: list[Path], root: Path) -> str:
    if len(paths) == 1:
        return relpath(paths[0], root)
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    if common == Path(root) or relpath(common, root) == ".":
        # Loose files grouped by StudyInstanceUID: "." would say nothing, so name the first file.
        first = min(relpath(p, root) for p in paths)
        return f"{first} (+{len(paths) - 1} files)"
    return relpath(common, root)


def _scan_unit(files: list[Path], root: Path, secret: bytes, uid_count: dict[str, int]) -> Iterator[StudyRef | StudyError]:
    headers: list[_Header] = []
    rasters: list[Path] = []
    out: list[StudyRef | StudyError] = []
    for path in files:
        if _is_ignored(path):
            continue
        if is_raster(path):
            rasters.append(path)
            continue
        try:
            summary, ds = read_header(path)
        except IngestError as exc:
            reason = str(exc)
            if path.suffix.lower() not in DICOM_SUFFIXES and reason.startswith("not a DICOM file"):
                out.append(_file_error(path, root, secret, f"not DICOM or a supported image ({path.suffix.lower()}); ignored", "skipped"))
            else:
                out.append(_file_error(path, root, secret, reason))
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "").strip() or None
        headers.append(_Header(path, raw_relpath(path, root), uid, summary))

    groups: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[h.uid if h.uid else "file:" + h.rel].append(h)

    # rasters in a folder holding DICOM of exactly one study ride along with it
    dicom_dirs: dict[Path, set[str]] = defaultdict(set)
    for gkey, members in groups.items():
        for h in members:
            dicom_dirs[h.path.parent].add(gkey)
    attached: dict[str, list[Path]] = defaultdict(list)
    for r in rasters:
        owners = dicom_dirs.get(r.parent)
        if owners and len(owners) == 1:
            attached[next(iter(owners))].append(r)
        else:
            out.append(StudyRef(key=path_key(secret, raw_relpath(r, root)), source=relpath(r, root), files=(str(r),)))

    for gkey, members in groups.items():
        paths = sorted(h.path for h in members)
        extra = sorted(attached.get(gkey, []))
        uid = members[0].uid
        if uid:
            n = uid_count.get(uid, 0) + 1
            uid_count[uid] = n
            key = study_key(secret, uid) + (f"-{n}" if n > 1 else "")
        else:
            key = path_key(secret, members[0].rel, prefix="f-")
        summaries = tuple(h.summary for h in sorted(members, key=lambda h: h.path))
        # the same str objects as the summaries' paths, so a pickled ref stores each path once
        files = tuple(h.path for h in summaries) + tuple(str(p) for p in extra)
        ref = StudyRef(key=key, source=_source(paths + extra, root), files=files, uid=uid, headers=summaries)
        images = [h for h in members if h.summary.non_image is None]
        if not images and not extra:
            kinds = sorted({h.summary.non_image or "" for h in members})
            out.append(StudyError(ref=ref, stage="discover", reason="; ".join(kinds), status="skipped"))
        else:
            out.append(ref)
    yield from sorted(out, key=lambda r: (r.source if isinstance(r, StudyRef) else r.ref.source,
                                          r.key if isinstance(r, StudyRef) else r.ref.key))


def check_studies_folder(studies: Path, out: Path | None = None) -> None:
    """Raise UsageProblem when the studies folder is a medvlm output folder or the output folder itself."""
    studies = Path(studies)
    if out is not None and os.path.realpath(studies) == os.path.realpath(out):
        raise UsageProblem(f"--out {out} is the studies folder; write the run elsewhere (a folder inside it is fine)")
    if studies.is_dir() and is_run_folder(studies):
        raise UsageProblem(f"{studies} is a medvlm output folder (it holds {RUN_MARKERS[0]} or {RUN_MARKERS[1]}/), "
                           "not a folder of studies")


def discover(root: Path, key_secret: bytes, modality: str = "auto", *, follow_links: bool = False,
             on_scan: Callable[[int], None] | None = None) -> Iterator[StudyRef | StudyError]:
    """Stream the studies under root (headers only): StudyRef per study, StudyError per bad file.

    modality is accepted for interface symmetry; routing and mismatch checks happen in load_study.
    on_scan(entries) is called every few seconds while folders are listed (a status line for big trees).
    Raises FileNotFoundError / NotADirectoryError only for a root that does not exist (a usage error),
    UsageProblem for a root that is a medvlm output folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input folder not found: {root}")
    if root.is_file():
        yield from _scan_unit([root.resolve()], root.resolve().parent, key_secret, {})
        return
    check_studies_folder(root)
    root = root.resolve()
    scan = _Scan(root, key_secret, follow_links, on_scan)
    uid_count: dict[str, int] = {}
    loose: list[Path] = []
    folders: list[tuple[Path, str]] = []
    entries = scan.entries_of(root)
    if isinstance(entries, StudyError):
        raise NotADirectoryError(f"cannot list input folder {root}: {entries.reason.split(': ', 1)[-1]}")
    top = frozenset({scan.real_root})
    for entry in entries:
        scan.tick()
        kind = scan.classify(Path(entry.path), top)
        if kind is None:
            continue
        if isinstance(kind, StudyError):
            yield kind
        elif kind[0] == "dir":
            folders.append((Path(entry.path), kind[1]))
        else:
            loose.append(Path(entry.path))
    if loose:
        yield from _scan_unit(loose, root, key_secret, uid_count)
    for folder, real in folders:
        files: list[Path] = []
        for item in scan.walk(folder, top | {real}):
            if isinstance(item, StudyError):
                yield item
            else:
                files.append(item)
        yield from _scan_unit(files, root, key_secret, uid_count)
    if on_scan is not None and scan.reported:
        on_scan(scan.entries)


__all__ = ["discover", "relpath", "check_studies_folder", "RASTER_SUFFIXES"]
