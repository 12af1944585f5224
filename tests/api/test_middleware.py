"""BodySizeLimit: MAX_MESSAGE_BYTES on the request body as it streams, against a real
uvicorn socket, and the middleware on its own.

A client that announces or sends far more than the limit gets 413 quickly; the server
reads no more than the limit (plus socket buffers), so memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import BodySizeLimit, create_app
from tests.api.helpers import KEY, LiveServer, MakeSettings, stored_rows

pytestmark = pytest.mark.unit

LIMIT = 1024 * 1024
GIGABYTE = 1024**3


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def server(make_settings: MakeSettings, live_server: Callable[[FastAPI], LiveServer]) -> LiveServer:
    return live_server(create_app(make_settings(max_message_bytes=LIMIT)))


def request_head(port: int, extra: str) -> bytes:
    return (
        f"POST /send_async HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def test_announced_gigabyte_is_refused_before_any_body_is_sent(server: LiveServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {GIGABYTE}\r\n"))
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - started < 2.0


def test_chunked_gigabyte_is_refused_after_reading_about_the_limit(
    server: LiveServer, db_path: Path
) -> None:
    """Send a chunked body of up to 1 GB; the 413 must come long before the end of it."""
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    response = b""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, "Transfer-Encoding: chunked\r\n"))
        start = b'{"to": "a@x.com", "body": "'
        sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
        sock.setblocking(False)
        while sent < GIGABYTE:
            readable, writable, _ = select.select([sock], [sock], [], 5.0)
            if readable:
                response = read_response(sock)
                break
            if not writable:
                break
            # The server may stop reading (full buffers) or close once it has answered.
            with contextlib.suppress(BlockingIOError, ConnectionResetError, BrokenPipeError):
                sent += sock.send(frame)
        else:
            pytest.fail("the whole gigabyte was accepted")
        if not response:
            response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    # Socket buffers on loopback hold a few MB at most; a full read would be 1 GB.
    assert sent < 64 * 1024 * 1024
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert rss_growth_mib < 64
    assert stored_rows(db_path) == []


def test_body_at_the_limit_passes_the_middleware(server: LiveServer) -> None:
    """Exactly LIMIT bytes is not refused by size (it is invalid JSON, so a 422)."""
    body = b"x" * LIMIT
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server.port, f"Content-Length: {len(body)}\r\n") + body)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 422 ")


def test_middleware_passes_other_scopes_through() -> None:
    """Lifespan and websocket scopes are not HTTP requests and are never limited."""
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))

    middleware = BodySizeLimit(app, limit=1)  # type: ignore[arg-type]
    asyncio.run(middleware({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


# -- the middleware on its own ------------------------------------------------------


def run_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Any]:
    """Drive an ASGI app with a request body in chunks; return what it sent."""
    sent: list[Any] = []
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Any:
        return pending.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent


async def reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body by itself (not through FastAPI), then answers 200."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middleware_answers_413_itself_when_the_app_reads_past_the_limit() -> None:
    sent = run_asgi(BodySizeLimit(reading_app, limit=10), [], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {
        "detail": "request body over 10 bytes (MAX_MESSAGE_BYTES): send fewer or smaller "
        "attachments; the service's operator can raise MAX_MESSAGE_BYTES"
    }


def test_middleware_lets_a_body_at_the_limit_through() -> None:
    sent = run_asgi(BodySizeLimit(reading_app, limit=12), [], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 200


def test_middleware_leaves_a_malformed_content_length_to_the_server() -> None:
    headers = [(b"content-length", b"nope")]
    sent = run_asgi(BodySizeLimit(reading_app, limit=12), headers, [b"x"])
    assert sent[0]["status"] == 200
