"""A real browser for the page tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download is not reachable from CI, so the fixture launches
the system's chromium by path (`.ci/run` installs it with apt-get). Without it the
browser tests fail with one line saying what to install: never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

__all__ = ["browser", "chromium_path", "page", "playwright"]


def chromium_path() -> str:
    """CHROMIUM, else `chromium` on PATH."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail(
            "no chromium for the browser tests: apt-get install chromium "
            "(or set CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    return path


# Per module, not per session: while Playwright's sync API is open, its event loop is
# the main thread's running loop, and every later test calling asyncio.run() fails
# ("cannot be called from a running event loop"). Closed at the end of each browser
# module, it leaves the rest of the run alone.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (no shared cookies, storage or cache) and one page in it."""
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()
