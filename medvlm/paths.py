"""Where medvlm finds its data files (prompts, schemas) and its cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


def prompts_dir() -> Path:
    return Path(os.environ.get("MEDVLM_PROMPTS_DIR", PROJECT_DIR / "prompts"))


def schemas_dir() -> Path:
    return Path(os.environ.get("MEDVLM_SCHEMAS_DIR", PROJECT_DIR / "schemas"))


def cache_dir() -> Path:
    """User cache (demo model lives here); MEDVLM_CACHE_DIR overrides."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medvlm"
    return Path(os.environ.get("MEDVLM_CACHE_DIR", default))
