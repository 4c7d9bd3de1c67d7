"""A model directory's weight files: which they are, their safetensors headers, and their digest.

The one place that lists weight files and parses safetensors headers (the memory estimate, the
streamed int8 loader and provenance all read them through here).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from ..fileio import atomic_write_text, sha256_file
from ..paths import cache_dir

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
CACHE_NAME = "weights-sha256.json"


SAFETENSORS_INDEX = "model.safetensors.index.json"


def safetensors_files(local_dir: Path) -> list[Path]:
    """The checkpoint's .safetensors files: those the shard index names, else every one in the folder."""
    local_dir = Path(local_dir)
    index = local_dir / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            names = []
        files = [local_dir / n for n in names]
        if files and all(f.is_file() for f in files):
            return files
    return sorted(p for p in local_dir.glob("*.safetensors") if p.is_file())


def weight_files(local_dir: Path) -> list[Path]:
    """Weight files of a model directory; safetensors when present, else the older formats."""
    local_dir = Path(local_dir)
    safetensors = safetensors_files(local_dir)
    if safetensors:
        return safetensors
    return sorted({p for pattern in WEIGHT_PATTERNS[1:] for p in local_dir.glob(pattern) if p.is_file()})


def read_safetensors_header(path: Path) -> tuple[int, dict[str, dict]]:
    """(offset of the data section, {name: {dtype, shape, data_offsets}}) of one .safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256_cached(path: Path, cache: dict) -> str:
    """SHA-256 of a file, reused from `cache` while its (path, size, mtime) is unchanged."""
    real = Path(path).resolve()  # HF snapshots are symlinks into blobs/
    st = real.stat()
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    if key not in cache:
        cache[key] = sha256_file(real)
    return cache[key]


def weights_digest(local_dir: str | Path | None) -> str | None:
    """SHA-256 over the sorted lines '<relative path> <sha256 of file>' of every weight file, or None."""
    if not local_dir or not Path(local_dir).is_dir():
        return None
    files = weight_files(Path(local_dir))
    if not files:
        return None
    cache_path = cache_dir() / CACHE_NAME
    cache = _load_cache(cache_path)
    before = len(cache)
    lines = [f"{p.relative_to(local_dir).as_posix()} {file_sha256_cached(p, cache)}\n" for p in files]
    if len(cache) != before:
        try:
            atomic_write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return hashlib.sha256("".join(lines).encode()).hexdigest()
