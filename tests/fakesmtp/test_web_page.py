"""The web page at `/`, in a real chromium: live list, a message's HTML in a sandbox with
remote content blocked until asked for, inline images, raw source, headers, attachments,
search and deletion.

FAKESMTP_SCREENSHOTS=docs/img makes the tests save docs/img/fakesmtp-list.png and
docs/img/fakesmtp-message.png on the way; without it they write nothing.
"""

from __future__ import annotations

import os
import smtplib
import struct
import threading
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Frame, Page, expect

from fakesmtp import FakeSMTPServer

pytestmark = pytest.mark.browser

ATTACHMENT = bytes(range(256)) * 64  # every byte value: a download that mangles any shows
CID = "logo@fakesmtp.test"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour, so that the browser decodes it (naturalWidth > 0)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class RemoteImages:
    """An HTTP server on 127.0.0.1 standing for the internet: it serves a PNG for any
    path and notes every request, so a test can tell whether the page asked for one."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.requested = threading.Event()
        image = png(40, 20, (200, 60, 60))
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                remote.paths.append(self.path)
                remote.requested.set()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RemoteImages:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def remote() -> Iterator[RemoteImages]:
    with RemoteImages() as server:
        yield server


@pytest.fixture
def live_page(page: Page, server: FakeSMTPServer) -> Page:
    """The page, open, its event stream connected (so what is sent next is news to it)."""
    page.set_viewport_size({"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(str(server.http_url))
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.loadedOnce = true")  # gone if the page ever reloads
    assert errors == []
    return page


def screenshot(page: Page, name: str) -> None:
    directory = os.environ.get("FAKESMTP_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / name))


def send(server: FakeSMTPServer, message: EmailMessage) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(message)


def plain(
    subject: str, sender: str = "Shop <shop@example.com>", body: str = "Hello.\n"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Ana Lima <ana@example.com>"
    message["Subject"] = subject
    message.set_content(body)
    return message


def receipt(remote_url: str) -> EmailMessage:
    """HTML with a script, an inline (cid:) image and a remote image; a binary attachment."""
    message = plain("Your receipt", body="Thank you for your order (text part).\n")
    message["Cc"] = "accounts@example.com"
    message.add_alternative(
        "<!doctype html><html><body style='font-family: sans-serif'>"
        "<h2>Thank you for your order</h2>"
        "<p id='marker'>script did not run</p>"
        f"<p><img id='inline' src='cid:{CID}' alt='logo'></p>"
        f"<p><img id='remote' src='{remote_url}/pixel.png' alt='tracking pixel'></p>"
        "<script>document.getElementById('marker').textContent = 'script ran';</script>"
        "</body></html>",
        subtype="html",
    )
    html = message.get_payload()[1]
    assert isinstance(html, EmailMessage)
    html.add_related(
        png(64, 32, (30, 120, 200)), "image", "png", cid=f"<{CID}>", filename="logo.png"
    )
    message.add_attachment(
        ATTACHMENT, maintype="application", subtype="octet-stream", filename="report.bin"
    )
    return message


def html_frame(page: Page) -> Frame:
    """The message's iframe once it has loaded, images and all."""
    handle = page.locator("iframe").element_handle()
    frame = handle.content_frame()
    assert frame is not None
    frame.wait_for_load_state("load")
    return frame


def natural_width(frame: Frame, selector: str) -> int:
    width: int = frame.locator(selector).evaluate("img => img.naturalWidth")
    return width


def test_a_message_sent_after_the_page_opened_is_listed_without_a_reload(
    live_page: Page, server: FakeSMTPServer, remote: RemoteImages
) -> None:
    send(server, receipt(remote.url))
    item = live_page.locator("#messages li", has_text="Your receipt")
    expect(item).to_be_visible()
    expect(item).to_contain_text("Shop")
    expect(item.locator(".clip")).to_be_visible()  # it has an attachment
    expect(live_page.locator("#count")).to_have_text("1 message")
    assert live_page.evaluate("window.loadedOnce") is True


def test_the_html_runs_no_script_and_loads_nothing_remote_until_asked(
    live_page: Page, server: FakeSMTPServer, remote: RemoteImages
) -> None:
    send(server, receipt(remote.url))
    live_page.locator("#messages li", has_text="Your receipt").click()
    expect(live_page.locator(".message h1")).to_have_text("Your receipt")
    expect(live_page.locator('[data-field="cc"]')).to_have_text("accounts@example.com")
    sandbox = live_page.locator("iframe").get_attribute("sandbox") or ""
    assert "allow-scripts" not in sandbox.split()
    frame = html_frame(live_page)
    expect(frame.locator("h2")).to_have_text("Thank you for your order")
    expect(frame.locator("#marker")).to_have_text("script did not run")
    assert natural_width(frame, "#inline") == 64  # the cid: image, from the message's part
    assert natural_width(frame, "#remote") == 0
    assert remote.paths == []  # the frame has loaded: the remote image was never asked for
    screenshot(live_page, "fakesmtp-message.png")

    live_page.get_by_role("button", name="Load remote content").click()
    assert remote.requested.wait(5), "the remote image was not loaded when asked for"
    frame = html_frame(live_page)
    assert remote.paths == ["/pixel.png"]
    assert natural_width(frame, "#remote") == 40
    assert natural_width(frame, "#inline") == 64
    expect(frame.locator("#marker")).to_have_text("script did not run")


def test_text_headers_raw_source_and_the_attachment_download(
    live_page: Page, server: FakeSMTPServer, remote: RemoteImages
) -> None:
    send(server, receipt(remote.url))
    live_page.locator("#messages li", has_text="Your receipt").click()
    view = live_page.locator(".message")
    view.get_by_role("tab", name="Text").click()
    expect(view.locator('[data-panel="text"]')).to_have_text(
        "Thank you for your order (text part).\n"
    )
    view.get_by_role("tab", name="Headers").click()
    headers = view.locator('[data-panel="headers"]')
    expect(headers.locator("tr", has_text="Subject")).to_contain_text("Your receipt")
    expect(headers.locator("tr", has_text="Cc")).to_contain_text("accounts@example.com")
    view.get_by_role("tab", name="Raw").click()
    raw = view.locator('[data-panel="raw"]')
    expect(raw).to_contain_text("Subject: Your receipt")
    expect(raw).to_contain_text(f"Content-ID: <{CID}>")
    expect(raw).to_contain_text('filename="report.bin"')
    with live_page.expect_download() as download:
        view.get_by_role("link", name="report.bin").click()
    assert download.value.suggested_filename == "report.bin"
    assert Path(download.value.path()).read_bytes() == ATTACHMENT


def test_search_narrows_the_list_and_clearing_it_brings_all_back(
    live_page: Page, server: FakeSMTPServer
) -> None:
    send(server, plain("Welcome to Example", sender="Example <hello@example.com>"))
    send(server, plain("Invoice 2026-001", body="Amount due: 12.00 EUR\n"))
    send(server, plain("Reset your password", sender="Security <security@example.com>"))
    send(server, plain("Invoice 2026-002", body="Amount due: 30.00 EUR\n"))
    items = live_page.locator("#messages li")
    expect(items).to_have_count(4)
    expect(items.first).to_contain_text("Invoice 2026-002")  # newest first
    live_page.locator("#messages li", has_text="Welcome to Example").click()
    expect(live_page.locator(".message h1")).to_have_text("Welcome to Example")
    screenshot(live_page, "fakesmtp-list.png")

    live_page.locator("#query").fill("invoice")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("Invoice 2026-002")
    expect(items.nth(1)).to_contain_text("Invoice 2026-001")
    expect(live_page.locator("#count")).to_have_text("2 of 4 messages match")
    live_page.locator("#query").fill("")
    expect(items).to_have_count(4)


def test_delete_one_then_delete_all(live_page: Page, server: FakeSMTPServer) -> None:
    for subject in ("first", "second", "third"):
        send(server, plain(subject))
    items = live_page.locator("#messages li")
    expect(items).to_have_count(3)
    doomed = server.wait_for(lambda m: m.subject == "second")
    live_page.locator("#messages li", has_text="second").click()
    live_page.locator(".message").get_by_role("button", name="Delete", exact=True).click()
    expect(items).to_have_count(2)
    expect(live_page.locator("#messages")).not_to_contain_text("second")
    expect(live_page.locator(".placeholder")).to_have_text("Select a message.")
    assert server.message(doomed.id) is None

    live_page.once("dialog", lambda dialog: dialog.accept())
    live_page.locator("#delete-all").click()
    expect(items).to_have_count(0)
    expect(live_page.locator("#empty")).to_be_visible()
    expect(live_page.locator("#count")).to_have_text("0 messages")
    assert server.messages() == []


def test_a_message_deleted_elsewhere_leaves_the_list_and_the_view(
    live_page: Page, server: FakeSMTPServer
) -> None:
    send(server, plain("short-lived"))
    live_page.locator("#messages li", has_text="short-lived").click()
    expect(live_page.locator(".message h1")).to_have_text("short-lived")
    server.clear_messages()  # not through the page: it hears of it on the event stream
    expect(live_page.locator("#messages li")).to_have_count(0)
    expect(live_page.locator(".placeholder")).to_have_text("This message is gone.")


def test_markup_in_a_subject_or_a_name_is_shown_as_text(
    live_page: Page, server: FakeSMTPServer
) -> None:
    subject = "<img src=x onerror=alert(1)> <b>bold?</b>"
    send(server, plain(subject, sender='"<i>Eve</i>" <eve@example.com>'))
    item = live_page.locator("#messages li").first
    expect(item.locator(".subject")).to_have_text(subject)
    expect(item.locator(".from")).to_have_text("<i>Eve</i>")
    item.click()
    expect(live_page.locator(".message h1")).to_have_text(subject)
    expect(live_page.locator('[data-field="from"]')).to_have_text("<i>Eve</i> <eve@example.com>")
    assert live_page.locator("#messages img, #messages b, .message h1 *, .envelope i").count() == 0
