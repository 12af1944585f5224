"""The API's documentation pages, /docs (Swagger UI) and /redoc, with no CDN.

FastAPI's default pages load their scripts, CSS and favicon from a CDN, so on a
machine without internet access they stay blank. These are the same pages, built by
FastAPI's own `get_swagger_ui_html` and `get_redoc_html`; only the asset URLs change,
to files under /docs/assets served from the installed fastapi-offline package.

Like FastAPI's defaults, the pages and their assets are public (nothing here has an
API key dependency, and no middleware checks keys) and stay out of the OpenAPI schema.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "DOCS_PATH", "REDOC_PATH", "add_docs"]

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
_OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"  # FastAPI's default, kept as it was


def add_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets. The app must be built with
    `docs_url=None, redoc_url=None`, so that FastAPI does not add its CDN pages."""
    openapi_url = app.openapi_url
    if openapi_url is None or app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(  # pragma: no cover - a mistake in create_app, caught at start
            "add_docs needs an app with openapi_url set and docs_url=None, redoc_url=None"
        )
    # fastapi-offline's static/ holds the very files FastAPI's pages fetch from the CDN
    # (swagger-ui-dist@5, redoc@2, FastAPI's favicon), downloaded when the package is
    # built. We use its files only, not its FastAPIOffline factory: create_app builds the
    # app. files() raises at start-up if the package is missing, StaticFiles if the
    # folder is.
    assets = StaticFiles(directory=str(files("fastapi_offline") / "static"))
    app.mount(ASSETS_PATH, assets, name="docs-assets")  # mounts are never in the schema

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=root + _OAUTH2_REDIRECT_PATH,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,  # they come from Google's servers; ReDoc falls back
        )
        # ReDoc's sidebar footer ("API docs by Redocly") always loads its logo from
        # Redocly's CDN, and hides it when that fails. This policy makes the browser
        # refuse it before anything leaves; everything else ReDoc loads is ours.
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page

    app.add_route(DOCS_PATH, swagger_ui, include_in_schema=False)
    app.add_route(_OAUTH2_REDIRECT_PATH, oauth2_redirect, include_in_schema=False)
    app.add_route(REDOC_PATH, redoc, include_in_schema=False)


def _root_path(request: Request) -> str:
    # Behind a proxy that strips a prefix, the page must ask for /prefix/openapi.json
    # (what FastAPI's own pages do).
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
