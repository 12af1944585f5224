"""The invoice of test_attachments, sent through /send to a fakesmtp with its web page,
opened in a real chromium: the files are listed and download whole, the HTML shows the
inline image from the message's own part."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from fakesmtp import FakeSMTPServer
from tests.api.helpers import AUTH, MakeClient, MakeSettings
from tests.api.test_attachments import INVOICE, PDF, PNG

pytestmark = pytest.mark.browser


def test_fakesmtps_page_shows_the_files_and_the_inline_image(
    make_client: MakeClient, make_settings: MakeSettings, page: Page
) -> None:
    with FakeSMTPServer(port=0, http_port=0) as web_relay:
        client = make_client(make_settings(smtp_host=web_relay.host, smtp_port=web_relay.port))
        response = client.post("/send", json=INVOICE, headers=AUTH)
        assert response.status_code == 200, response.text
        [captured] = web_relay.messages()

        page.goto(f"{web_relay.http_url}/#{captured.id}")
        view = page.locator(".message")
        expect(view.locator("h1")).to_have_text("Invoice")
        files = view.locator('[data-field="attachments"]')
        expect(files).to_contain_text("invoice.pdf")
        expect(files).to_contain_text("Grüße résumé.csv")
        expect(files.locator("li", has_text="logo.png")).to_contain_text("inline")
        with page.expect_download() as download:
            files.get_by_role("link", name="invoice.pdf").click()
        assert Path(download.value.path()).read_bytes() == PDF

        frame_element = page.locator("iframe").element_handle()
        frame = frame_element.content_frame()
        assert frame is not None
        expect(frame.locator("p")).to_have_text("Your invoice.")
        src = frame.locator("img").get_attribute("src") or ""
        assert src.startswith(f"/api/v1/message/{captured.id}/part/"), src
        assert httpx.get(f"{web_relay.http_url}{src}").content == PNG

        view.get_by_role("tab", name="Text").click()
        expect(view.locator('[data-panel="text"]')).to_contain_text("Your invoice is attached.")
