"""Digest of the weight files in a model directory (cached, so it is computed once per file version)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..fileio import atomic_write_text, sha256_file
from ..paths import cache_dir

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
CACHE_NAME = "weights-sha256.json"


def weight_files(local_dir: Path) -> list[Path]:
    """Weight files under a model directory; safetensors when present, else the older formats."""
    local_dir = Path(local_dir)
    safetensors = sorted(p for p in local_dir.rglob("*.safetensors") if p.is_file())
    if safetensors:
        return safetensors
    return sorted({p for pattern in WEIGHT_PATTERNS[1:] for p in local_dir.rglob(pattern) if p.is_file()})


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
