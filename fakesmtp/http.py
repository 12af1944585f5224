"""The HTTP JSON API and the web page, served on the SMTP server's own event loop."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fakesmtp import mailpit, web
from fakesmtp.events import EventHub, events
from fakesmtp.faults import FaultRule, FaultSpecError

if TYPE_CHECKING:
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


_ROUTES = (
    Route("/", web.index, methods=["GET"]),
    Route("/view/{id}.html", web.view_html, methods=["GET"]),
    Mount("/static", StaticFiles(directory=web.STATIC, follow_symlink=False), name="static"),
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
    Route("/api/events", events, methods=["GET"]),
    *mailpit.ROUTES,
)


def create_app(server: FakeSMTPServer, *, events: EventHub | None = None) -> Starlette:
    """Build the API for one server. No global app: each server gets its own,
    and the endpoints find their server on ``app.state``. ``events`` feeds
    GET /api/events; the server passes the hub it closes when it stops (without
    one, the app makes its own, bound to the loop of its first stream)."""
    app = Starlette(routes=_ROUTES)
    app.state.server = server
    app.state.events = events if events is not None else EventHub(server.subscribe)
    return app
