"""What the web page is served with: its own files only, strict Content-Security-Policies,
and a message's HTML with its cid: references pointing at the message's parts."""

from __future__ import annotations

import re
import smtplib
import tomllib
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.web import HERE, STATIC

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def csp(response: httpx.Response) -> dict[str, str]:
    """The Content-Security-Policy as {directive: sources}."""
    directives = (d.strip() for d in response.headers["content-security-policy"].split(";"))
    return {name: rest.strip() for name, _, rest in (d.partition(" ") for d in directives)}


def test_the_page_runs_only_its_own_script_and_frames_only_its_own_pages(
    http: httpx.Client,
) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js" defer></script>' in page.text
    policy = csp(page)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-src"] == "'self'"
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = http.get(f"/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
    assert http.get("/static/nothing.js").status_code == 404


def test_no_shipped_file_loads_anything_from_elsewhere() -> None:
    for path in (HERE / "index.html", *STATIC.iterdir()):
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path


def test_every_file_of_the_page_is_in_the_package_data() -> None:
    config = tomllib.loads((REPO / "fakesmtp" / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["fakesmtp.web"]
    shipped = {p for pattern in patterns for p in HERE.glob(pattern)}
    assert {HERE / "index.html", *STATIC.iterdir()} <= shipped


def send_html(server: FakeSMTPServer, html: str, *, image_cid: str | None = None) -> str:
    message = EmailMessage()
    message["From"] = "s@example.com"
    message["To"] = "r@example.com"
    message["Subject"] = "html"
    message.set_content("text")
    message.add_alternative(html, subtype="html")
    if image_cid is not None:
        part = message.get_payload()[1]
        assert isinstance(part, EmailMessage)
        part.add_related(b"\x89PNG fake", "image", "png", cid=f"<{image_cid}>")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(message)
    return server.wait_for(lambda m: m.subject == "html").id


def test_a_message_html_may_load_only_its_own_parts_and_run_nothing(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    message_id = send_html(
        server,
        "<!DOCTYPE html><p><img src='cid:logo@x'><img src=\"CID:logo@x\">"
        "<div style='background:url(cid:logo@x);'></div><img src='cid:other@x'></p>",
        image_cid="logo@x",
    )
    response = http.get(f"/view/{message_id}.html")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = csp(response)
    assert policy["default-src"] == "'none'"
    assert "script-src" not in policy  # so default-src 'none' forbids every script
    assert policy["img-src"] == "'self' data:"
    assert policy["style-src"] == "'self' 'unsafe-inline'"
    assert "allow-scripts" not in policy["sandbox"].split()
    assert response.headers["referrer-policy"] == "no-referrer"
    [inline] = http.get(f"/api/v1/message/{message_id}").json()["Inline"]
    part = f"/api/v1/message/{message_id}/part/{inline['PartID']}"
    assert response.text == (
        f'<!DOCTYPE html><base target="_blank"><p><img src=\'{part}\'><img src="{part}">'
        f"<div style='background:url({part});'></div><img src='cid:other@x'></p>\r\n"
    )
    assert http.get(part).content == b"\x89PNG fake"


def test_remote_content_is_allowed_only_when_asked_for_and_scripts_never(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    message_id = send_html(server, "<p>hi</p>")
    policy = csp(http.get(f"/view/{message_id}.html", params={"remote": "1"}))
    assert policy["img-src"] == "* data:"
    assert policy["style-src"] == "* 'unsafe-inline'"
    assert policy["default-src"] == "'none'"
    assert "script-src" not in policy
    assert "allow-scripts" not in policy["sandbox"].split()


def test_the_html_of_an_unknown_message_is_404(http: httpx.Client) -> None:
    assert http.get("/view/999.html").status_code == 404
