"""Headless Chromium for the browser tests, found and started one way for every test file.

Importing this skips the importing test module when Playwright or Chromium is missing (the README
says how to install both).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed: run scripts/install_browser.sh")
CHROMIUM = os.environ.get("TL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium found (set TL_CHROMIUM or run scripts/install_browser.sh, which installs "
                "Debian's chromium package)", allow_module_level=True)

VIEWPORT = {"width": 1400, "height": 1000}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_context(profile: Path) -> Iterator[Any]:
    """A persistent Chromium context with a fresh profile folder, closed afterwards."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()
