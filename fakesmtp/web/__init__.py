"""The web page at ``/``: index.html and static/ (plain JS and CSS, nothing fetched from
elsewhere), and ``/view/{ID}.html``, a message's HTML for the page's sandboxed iframe.

The page reads the Mailpit API v1 (fakesmtp/mailpit.py) and follows GET /api/events
(fakesmtp/events.py). A message's HTML comes with a Content-Security-Policy that lets
no script run and nothing load from elsewhere, only the message's own parts (its
``cid:`` images, rewritten to /api/v1/message/{ID}/part/{PartID} as Mailpit does) and
``data:`` URLs; ``?remote=1`` (the page's "Load remote content") lets images, styles,
fonts and media load from anywhere, still without script.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

if TYPE_CHECKING:
    from fakesmtp.capture import CapturedMessage
    from fakesmtp.server import FakeSMTPServer

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"

# The page itself: its own script and style, the API, and its own iframes.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# A message's HTML. No script-src: default-src 'none' forbids every script, and the
# sandbox directive keeps it so even when the URL is opened on its own. allow-same-origin
# lets the page size the iframe to its content; without allow-scripts it gives the mail
# nothing to run.
_SANDBOX = "sandbox allow-same-origin allow-popups allow-popups-to-escape-sandbox"
_LOCAL_ONLY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; media-src 'self' data:; base-uri 'none'; form-action 'none'; "
    f"frame-ancestors 'self'; {_SANDBOX}"
)
_REMOTE_TOO = (
    "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; font-src * data:; "
    "media-src * data:; base-uri 'none'; form-action 'none'; "
    f"frame-ancestors 'self'; {_SANDBOX}"
)
_COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def index(request: Request) -> Response:
    """GET /: the page."""
    headers = {**_COMMON_HEADERS, "Content-Security-Policy": _PAGE_POLICY}
    return FileResponse(HERE / "index.html", media_type="text/html", headers=headers)


def _server(request: Request) -> FakeSMTPServer:
    server: FakeSMTPServer = request.app.state.server
    return server


_DOCTYPE = re.compile(r"\A\s*<!doctype[^>]*>", re.IGNORECASE)


def linked_html(message: CapturedMessage) -> str:
    """The message's HTML body with each ``cid:`` reference to one of its parts made a
    link to that part, as Mailpit's /view/{ID}.html does (its linkInlineImages; here
    in CSS ``url()`` too), and links opening in a new tab."""
    html = message.body_html
    for part in (*message.inline_parts, *message.other_parts, *message.attachment_parts):
        if not part.content_id:
            continue
        url = f"/api/v1/message/{message.id}/part/{part.part_id}"
        # Mailpit's expression (an attribute's value), and in CSS as url(cid:...) too.
        pattern = re.compile(
            r"(=[\"']?|url\([\"']?)(cid:" + re.escape(part.content_id) + r")([\"'\s/>;|)])",
            re.IGNORECASE,
        )
        html = pattern.sub(rf"\g<1>{url}\g<3>", html)
    # After a doctype, so that the document keeps its standards mode.
    doctype = _DOCTYPE.match(html)
    at = doctype.end() if doctype else 0
    return html[:at] + '<base target="_blank">' + html[at:]


def view_html(request: Request) -> Response:
    """GET /view/{ID}.html[?remote=1]. A plain function: Starlette runs it in its thread
    pool, so parsing a large message does not hold up the SMTP server's loop."""
    message = _server(request).message(request.path_params["id"])
    if message is None:
        return JSONResponse({"detail": "message not found"}, status_code=404)
    remote = request.query_params.get("remote") == "1"
    headers = {
        **_COMMON_HEADERS,
        "Content-Security-Policy": _REMOTE_TOO if remote else _LOCAL_ONLY,
    }
    return Response(linked_html(message), media_type="text/html", headers=headers)
