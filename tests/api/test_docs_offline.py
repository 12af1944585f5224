"""/docs and /redoc render with no network: their scripts, CSS and favicon come from
the service itself (service/api/docs.py), never from a CDN."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page, Response, Route
from playwright.sync_api import Request as BrowserRequest

from service.api.docs import ASSETS_PATH
from service.app import create_app
from service.config import Settings
from tests.api.helpers import LiveServer

ASSETS = ["swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"]


@dataclass
class Traffic:
    """What the page asked for beyond the service, and what failed."""

    left: list[str] = field(default_factory=list)  # aborted: for a host not 127.0.0.1
    blocked: list[str] = field(default_factory=list)  # refused by the page's own CSP
    failed: list[str] = field(default_factory=list)  # failed otherwise, or 4xx/5xx


@pytest.fixture
def offline_page(page: Page) -> tuple[Page, Traffic]:
    """The page with the network cut off: every request for a host other than 127.0.0.1
    is aborted and recorded, as on a machine without internet access."""
    traffic = Traffic()

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            traffic.left.append(route.request.url)
            route.abort("internetdisconnected")

    def on_failed(request: BrowserRequest) -> None:
        if request.failure == "csp":
            traffic.blocked.append(request.url)  # never sent, so never routed
        else:
            traffic.failed.append(f"{request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            traffic.failed.append(f"{response.url}: {response.status}")

    page.context.route("**/*", only_loopback)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    return page, traffic


@pytest.fixture
def service_url(live_server: Callable[[FastAPI], LiveServer], settings: Settings) -> str:
    """The real app under uvicorn on 127.0.0.1."""
    return live_server(create_app(settings)).url


@pytest.mark.browser
def test_swagger_ui_renders_the_operations_with_no_network(
    offline_page: tuple[Page, Traffic], service_url: str
) -> None:
    page, traffic = offline_page
    page.goto(f"{service_url}/docs", wait_until="networkidle")
    assert traffic == Traffic()  # first: when an asset is missing, this says which
    paths = page.locator(".opblock-summary-path")
    paths.first.wait_for()
    assert {"/send", "/send_async"} <= set(paths.all_inner_texts())
    assert "mail-service" in page.locator(".info .title").inner_text()
    assert page.title() == "mail-service - Swagger UI"


@pytest.mark.browser
def test_redoc_renders_the_operations_with_no_network(
    offline_page: tuple[Page, Traffic], service_url: str
) -> None:
    page, traffic = offline_page
    page.goto(f"{service_url}/redoc", wait_until="networkidle")
    assert traffic.left == []
    assert traffic.failed == []
    # What the page's policy refused (ReDoc's footer logo) was off the service, not ours.
    assert all(urlsplit(url).hostname != "127.0.0.1" for url in traffic.blocked)
    heading = page.locator("h1")
    heading.first.wait_for()
    assert "mail-service" in heading.first.inner_text()
    # Each operation's path is in its request panel, whether shown or folded.
    endpoints = page.locator("[data-section-id^='operation/'] button span + span")
    assert {"/send", "/send_async"} <= set(endpoints.all_text_contents())
    assert page.title() == "mail-service - ReDoc"


@pytest.mark.unit
@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_reference_no_absolute_url(settings: Settings, path: str) -> None:
    html = TestClient(create_app(settings)).get(path).text
    assert re.findall(r"https?://[^\s\"'<>]*", html) == []
    assert f"{ASSETS_PATH}/" in html


@pytest.mark.unit
@pytest.mark.parametrize(
    "path", ["/docs", "/docs/oauth2-redirect", "/redoc", *(f"{ASSETS_PATH}/{a}" for a in ASSETS)]
)
def test_docs_and_assets_are_public_and_not_in_the_schema(settings: Settings, path: str) -> None:
    client = TestClient(create_app(settings))
    response = client.get(path)  # no X-API-Key
    assert response.status_code == 200
    assert response.content
    schema_paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in schema_paths)
