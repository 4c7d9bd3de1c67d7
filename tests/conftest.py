"""Shared fixtures: a temp cache per session (the demo model is built there once), temp output per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHARED = PROJECT.parent / "shared"
SAMPLE_STUDIES = PROJECT / "sample_data" / "studies"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point medvlm's cache at a temp dir so tests build the demo model exactly as a fresh machine would."""
    cache = tmp_path_factory.mktemp("medvlm-cache")
    old = os.environ.get("MEDVLM_CACHE_DIR")
    os.environ["MEDVLM_CACHE_DIR"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield cache
    if old is None:
        os.environ.pop("MEDVLM_CACHE_DIR", None)
    else:
        os.environ["MEDVLM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def demo_model_dir(_isolated_cache):
    from medvlm.models.demo import ensure_random_model

    return ensure_random_model()


@pytest.fixture(scope="session")
def demo_backend(demo_model_dir):
    """The real demo model, loaded once per session (int8 dynamic on CPU, as `--quant auto` does)."""
    from medvlm.models import load_backend

    return load_backend("demo")


@pytest.fixture
def shared_images() -> Path:
    path = SHARED / "data" / "images"
    if not path.is_dir():
        pytest.skip("../shared/data/images not present (real test files are read in place)")
    return path


@pytest.fixture
def openi_csv() -> Path:
    path = SHARED / "data" / "openi" / "dev.csv"
    if not path.is_file():
        pytest.skip("../shared/data/openi/dev.csv not present")
    return path
