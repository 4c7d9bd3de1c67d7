"""Crash-safe file writes: temp file in the same folder, flush, fsync, rename."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write `data` to `path` atomically and return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; outputs are meant to be shared like any file the user writes.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def _read_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# Read once at import: os.umask() is process-wide, so probing it while writer threads run would race.
_UMASK = _read_umask()


def atomic_write_text(path: Path, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HASHES: dict[tuple, str] = {}
_HASHES_LOCK = threading.Lock()
_HASHES_MAX = 200_000


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, computed once per file version in this process.

    Ingest, resume and the ledger all need the hash of the same input files; they are remembered
    by (device, inode, size, mtime_ns, ctime_ns), so a file changed in between is hashed again.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a named pipe or device would block or never end
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASHES_LOCK:
        known = _HASHES.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    value = digest.hexdigest()
    with _HASHES_LOCK:
        if len(_HASHES) >= _HASHES_MAX:
            _HASHES.clear()
        _HASHES[key] = value
    return value


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def writable_dir_problem(path: Path, what: str = "--out") -> str | None:
    """Why `path` could not be (created and) written as a folder, in one sentence; None when it looks fine.

    Only reads: the check every command makes before its first write. Creating the folder can
    still fail (a kernel file system such as /proc); callers turn that OSError into a usage error too.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        return f"{what} {path} is a file, not a folder"
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        return f"{what} {path} is inside {base}, which is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be written: {base} is read-only or not writable by this user"
    return None


def writable_file_problem(path: Path, what: str = "--out") -> str | None:
    """Why `path` could not be written as a file, in one sentence; None when it looks fine (reads only)."""
    path = Path(path)
    if path.is_dir():
        return f"{what} {path} is a folder; give a file name"
    if os.path.lexists(path) and not path.is_file():
        return f"{what} {path} is not a regular file"
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        return f"{what} {path} is inside {base}, which is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{what} {path} cannot be written: {base} is read-only or not writable by this user"
    return None
