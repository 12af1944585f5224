"""The HTTP JSON API and the HTML page, served on the SMTP server's own event loop."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fakesmtp import mailpit
from fakesmtp.faults import FaultRule, FaultSpecError

if TYPE_CHECKING:
    from fakesmtp.capture import CapturedMessage
    from fakesmtp.server import FakeSMTPServer


def _server(request: Request) -> FakeSMTPServer:
    server: FakeSMTPServer = request.app.state.server
    return server


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"detail": f"{what} not found"}, status_code=404)


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise ValueError(f"{name} must be a non-negative integer")
    return int(value)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_messages(request: Request) -> Response:
    try:
        limit = _int_param(request, "limit", None)
        offset = _int_param(request, "offset", 0) or 0
    except ValueError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    messages = _server(request).messages()
    page = messages[offset : None if limit is None else offset + limit]
    return JSONResponse({"total": len(messages), "messages": [m.summary() for m in page]})


async def get_message(request: Request) -> Response:
    message = _server(request).message(request.path_params["id"])
    if message is None:
        return _not_found("message")
    return JSONResponse(message.detail())


async def get_raw(request: Request) -> Response:
    message = _server(request).message(request.path_params["id"])
    if message is None:
        return _not_found("message")
    return Response(message.raw, media_type="message/rfc822")


async def delete_messages(request: Request) -> Response:
    _server(request).clear_messages()
    return Response(status_code=204)


async def list_faults(request: Request) -> Response:
    return JSONResponse({"faults": _server(request).faults()})


async def add_fault(request: Request) -> Response:
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return JSONResponse({"detail": "body must be a JSON object"}, status_code=400)
    try:
        rule = FaultRule.from_dict(body)
    except (FaultSpecError, TypeError) as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    server = _server(request)
    rule_id = server.add_fault(rule)
    return JSONResponse(server.fault(rule_id) or {"id": rule_id}, status_code=201)


async def get_fault(request: Request) -> Response:
    rule = _server(request).fault(request.path_params["id"])
    if rule is None:
        return _not_found("fault rule")
    return JSONResponse(rule)


async def delete_faults(request: Request) -> Response:
    _server(request).clear_faults()
    return Response(status_code=204)


async def delete_fault(request: Request) -> Response:
    if not _server(request).remove_fault(request.path_params["id"]):
        return _not_found("fault rule")
    return Response(status_code=204)


async def stats(request: Request) -> Response:
    return JSONResponse(_server(request).stats())


async def index(request: Request) -> Response:
    server = _server(request)
    message_id = request.query_params.get("id")
    if message_id is None:
        return HTMLResponse(_page("fakesmtp", _list_html(server)))
    message = server.message(message_id)
    if message is None:
        return HTMLResponse(_page("Not found", "<p>No such message.</p>"), 404)
    return HTMLResponse(_page(message.subject or "(no subject)", _message_html(message)))


_ROUTES = (
    Route("/", index, methods=["GET"]),
    Route("/api/health", health, methods=["GET"]),
    Route("/api/messages", list_messages, methods=["GET"]),
    Route("/api/messages", delete_messages, methods=["DELETE"]),
    Route("/api/messages/{id}", get_message, methods=["GET"]),
    Route("/api/messages/{id}/raw", get_raw, methods=["GET"]),
    Route("/api/faults", list_faults, methods=["GET"]),
    Route("/api/faults", add_fault, methods=["POST"]),
    Route("/api/faults", delete_faults, methods=["DELETE"]),
    Route("/api/faults/{id}", get_fault, methods=["GET"]),
    Route("/api/faults/{id}", delete_fault, methods=["DELETE"]),
    Route("/api/stats", stats, methods=["GET"]),
    *mailpit.ROUTES,
)


def create_app(server: FakeSMTPServer) -> Starlette:
    """Build the API for one server. No global app: each server gets its own,
    and the endpoints find their server on ``app.state``."""
    app = Starlette(routes=_ROUTES)
    app.state.server = server
    return app


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;"
        "text-align:left}pre{white-space:pre-wrap;background:#f4f4f4;padding:1em}</style>"
        f"</head><body>{body}</body></html>"
    )


def _list_html(server: FakeSMTPServer) -> str:
    messages = server.messages()
    rows = "".join(
        "<tr>"
        f"<td><a href='/?id={html.escape(m.id)}'>"
        f"{html.escape(m.subject or '(no subject)')}</a></td>"
        f"<td>{html.escape(m.mail_from)}</td>"
        f"<td>{html.escape(', '.join(m.rcpt_tos))}</td>"
        f"<td>{html.escape(m.received_at.isoformat(timespec='seconds'))}</td>"
        f"<td>{m.size}</td></tr>"
        for m in messages[:500]
    )
    return (
        f"<h1>fakesmtp</h1><p>{len(messages)} message(s), newest first.</p>"
        "<table><tr><th>Subject</th><th>From</th><th>To</th><th>Received</th><th>Bytes</th></tr>"
        f"{rows}</table>"
    )


def _message_html(message: CapturedMessage) -> str:
    headers = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in message.headers
    )
    parts = [
        "<p><a href='/'>&larr; all messages</a> | "
        f"<a href='/api/messages/{html.escape(message.id)}/raw'>raw</a></p>",
        f"<h1>{html.escape(message.subject or '(no subject)')}</h1>",
        f"<p>Envelope: {html.escape(message.mail_from)} &rarr; "
        f"{html.escape(', '.join(message.rcpt_tos))}; TLS: {'yes' if message.tls else 'no'}; "
        f"AUTH: {html.escape(message.auth_user or '-')}</p>",
        f"<table>{headers}</table>",
    ]
    if message.text is not None:
        parts.append(f"<h2>Text</h2><pre>{html.escape(message.text)}</pre>")
    if message.html is not None:
        # Shown as source: rendering captured HTML would run whatever it contains.
        parts.append(f"<h2>HTML (source)</h2><pre>{html.escape(message.html)}</pre>")
    if message.attachments:
        names = ", ".join(html.escape(a) for a in message.attachments)
        parts.append(f"<h2>Attachments</h2><p>{names}</p>")
    return "".join(parts)
