"""Pure ASGI middleware: request latency for /metrics, and the body size limit."""

from __future__ import annotations

import json
import time

from fastapi.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

__all__ = ["BodySizeLimit", "RequestMetrics", "too_large"]


# -- request latency, for /metrics --------------------------------------------------


class RequestMetrics:
    """Pure ASGI middleware: observe each request's latency by route template and status.

    The route template (`/messages/{message_id}`), never the raw path, labels the
    series, so ids and probes of unknown paths cannot grow the label set.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - started
            )


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a body over `limit` bytes without buffering it.

    A Content-Length over the limit is answered at once, before reading anything. A
    chunked body is counted as it is received and refused as soon as the count passes
    the limit, so memory stays flat whatever the client sends.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        per_path: dict[str, int] | None = None,
        *,
        setting: str = "MAX_MESSAGE_BYTES",
        per_path_settings: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.per_path = per_path or {}  # a path's own limit (a batch's body is larger)
        # The setting that holds each limit, named in the 413 (create_app's per_path).
        self.setting = setting
        self.per_path_settings = (
            {"/send_batch": "BATCH_MAX_BYTES"} if per_path_settings is None else per_path_settings
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.per_path.get(path, self.limit)
        setting = self.per_path_settings.get(path, self.setting)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # the server rejects a malformed length before us
                if declared > limit:
                    await _refuse(send, too_large(limit, setting))
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(too_large(limit, setting))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:  # pragma: no cover - endpoints read the body before answering
                raise
            await _refuse(send, too_large(limit, setting))


_REMEDIES = {"BATCH_MAX_BYTES": "split the batch into smaller ones"}


def too_large(limit: int, setting: str) -> str:
    """The 413's detail: the limit, the setting that holds it, and what to do."""
    remedy = _REMEDIES.get(setting, "send fewer or smaller attachments")
    return (
        f"request body over {limit} bytes ({setting}): {remedy}; the service's operator "
        f"can raise {setting}"
    )


async def _refuse(send: Send, detail: str) -> None:
    # Serialised as Starlette's JSONResponse does, so this answer is byte for byte in
    # the shape of every other error.
    body = json.dumps(
        {"detail": detail}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the upload is not read: tell the client not to reuse
                # the connection (servers close it anyway).
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body reader lets it
    through instead of turning it into a 400, and the exception handler answers 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)
