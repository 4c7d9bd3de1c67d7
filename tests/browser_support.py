"""Debian's chromium driven by Playwright, for the browser tests (review app, index.html).

Skips with a message when /usr/bin/chromium or the playwright package is missing; where CI sets
MEDVLM_REQUIRE_BROWSER=1 (.ci/run installs both) a missing browser fails instead.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("MEDVLM_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _missing(reason: str):
    # CI sets MEDVLM_REQUIRE_BROWSER=1 (.ci/run installs chromium): there a missing browser is a failure, not a skip.
    (pytest.fail if os.environ.get("MEDVLM_REQUIRE_BROWSER") == "1" else pytest.skip)(reason)


@contextmanager
def chromium():
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (apt-get install chromium); the browser tests need Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright; its browser download is not used)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
