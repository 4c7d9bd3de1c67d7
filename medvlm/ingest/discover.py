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
- Sidecars (.json/.csv/.txt...), hidden files and DICOMDIR indexes are not studies.
- Symlinked folders are followed once; loops, broken links and unreadable folders become errors.
- Keys: "s-" + hmac-sha256(secret, StudyInstanceUID)[:16]; raster studies "r-" + hmac of the
  relative path; unreadable files "f-" + hmac of the relative path. A StudyInstanceUID met again in
  a later unit gets the key with a "-2", "-3"... suffix (the units are yielded separately).
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..records import StudyError, StudyRef
from .headers import read_header
from .privacy import path_key, study_key
from .raster import RASTER_SUFFIXES, is_raster
from .types import HeaderSummary, IngestError

# Files that accompany studies but are never studies themselves.
IGNORED_SUFFIXES = frozenset(
    {".json", ".csv", ".tsv", ".txt", ".md", ".xml", ".yaml", ".yml", ".ini", ".log", ".html", ".htm",
     ".sha256", ".md5"}
)
IGNORED_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini", "lockfile", "version"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima", ""})


@dataclass
class _Header:
    path: Path
    rel: str
    uid: str | None
    summary: HeaderSummary


def relpath(path: Path, root: Path) -> str:
    """Path relative to the batch root, POSIX style (never absolute in outputs)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return path.name


def _file_error(path: Path, root: Path, secret: bytes, reason: str, status: str = "error") -> StudyError:
    rel = relpath(path, root)
    ref = StudyRef(key=path_key(secret, rel, prefix="f-"), source=rel, files=(str(path),))
    return StudyError(ref=ref, stage="discover", reason=f"{rel}: {reason}", status=status)  # type: ignore[arg-type]


def _walk(folder: Path, root: Path, secret: bytes, ancestors: frozenset[str], seen: set[str]) -> Iterator[Path | StudyError]:
    """Files below folder (sorted), following symlinked folders once, errors as values."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        yield _file_error(folder, root, secret, "cannot list folder: permission denied")
        return
    except OSError as exc:
        yield _file_error(folder, root, secret, f"cannot list folder: {exc.strerror or type(exc).__name__}")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=True)
            is_file = entry.is_file(follow_symlinks=True)
        except OSError as exc:
            yield _file_error(path, root, secret, _stat_reason(exc))
            continue
        if is_dir:
            try:
                real = os.path.realpath(path)
            except (OSError, RuntimeError):
                yield _file_error(path, root, secret, "symlink loop (cannot resolve)")
                continue
            if real in ancestors:
                yield _file_error(path, root, secret, "symlink loop (link points to a parent folder); not followed")
                continue
            if real in seen:
                yield _file_error(path, root, secret, "folder already scanned through another link; not followed", "skipped")
                continue
            seen.add(real)
            yield from _walk(path, root, secret, ancestors | {real}, seen)
        elif is_file:
            yield path
        elif is_link:
            yield _file_error(path, root, secret, _dangling_link_reason(path))
        else:
            yield _file_error(path, root, secret, "not a regular file (device, socket or pipe); ignored", "skipped")


def _stat_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.EACCES:
        return "cannot read: permission denied"
    return f"cannot stat: {exc.strerror or type(exc).__name__}"


def _is_ignored(path: Path) -> bool:
    return path.suffix.lower() in IGNORED_SUFFIXES or path.name.lower() in IGNORED_NAMES


def _dangling_link_reason(path: Path) -> str:
    """Why a symlink that is not a readable file or folder cannot be followed."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
    return "broken symlink"


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
        headers.append(_Header(path, relpath(path, root), uid, summary))

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
            rel = relpath(r, root)
            out.append(StudyRef(key=path_key(secret, rel), source=rel, files=(str(r),)))

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


def discover(root: Path, key_secret: bytes, modality: str = "auto") -> Iterator[StudyRef | StudyError]:
    """Stream the studies under root (headers only): StudyRef per study, StudyError per bad file.

    modality is accepted for interface symmetry; routing and mismatch checks happen in load_study.
    Raises FileNotFoundError / NotADirectoryError only for a root that does not exist (a usage error).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input folder not found: {root}")
    if root.is_file():
        yield from _scan_unit([root.resolve()], root.resolve().parent, key_secret, {})
        return
    root = root.resolve()
    uid_count: dict[str, int] = {}
    loose: list[Path] = []
    folders: list[Path] = []
    walked = list(_walk_top(root, key_secret))
    for item in walked:
        if isinstance(item, StudyError):
            yield item
        elif item.is_dir():
            folders.append(item)
        else:
            loose.append(item)
    if loose:
        yield from _scan_unit(loose, root, key_secret, uid_count)
    seen: set[str] = {os.path.realpath(root)}
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            yield _file_error(folder, root, key_secret, "symlink loop or folder already scanned; not followed", "skipped")
            continue
        seen.add(real)
        files: list[Path] = []
        for item in _walk(folder, root, key_secret, frozenset({os.path.realpath(root), real}), seen):
            if isinstance(item, StudyError):
                yield item
            else:
                files.append(item)
        yield from _scan_unit(files, root, key_secret, uid_count)


def _walk_top(root: Path, secret: bytes) -> Iterator[Path | StudyError]:
    """Top-level entries: files and folders (sorted); broken links and specials as errors."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise NotADirectoryError(f"cannot list input folder {root}: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                yield path
                continue
            if entry.is_file(follow_symlinks=True):
                yield path
                continue
        except OSError as exc:
            yield _file_error(path, root, secret, _stat_reason(exc))
            continue
        if entry.is_symlink():
            yield _file_error(path, root, secret, _dangling_link_reason(path))
        else:
            yield _file_error(path, root, secret, "not a regular file (device, socket or pipe); ignored", "skipped")


__all__ = ["discover", "relpath", "RASTER_SUFFIXES"]
