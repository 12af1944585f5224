"""The browser fixture starts the system's chromium and renders a page."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

pytestmark = pytest.mark.browser


def test_the_system_chromium_renders_and_runs_script(page: Page) -> None:
    page.set_content("<p id=out></p><script>out.textContent = 6 * 7</script>")
    assert page.inner_text("#out") == "42"
