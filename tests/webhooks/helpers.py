"""A real webhook receiver on 127.0.0.1 that can answer 2xx, fail, hang or be down."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

__all__ = ["SECRET", "Delivery", "WebhookReceiver", "free_port"]

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, ok!!!").decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Delivery:
    """One POST the receiver got, its signature checked with the standardwebhooks library."""

    def __init__(self, headers: dict[str, str], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self.payload: dict[str, Any] = json.loads(body)
        self.id = headers.get("webhook-id", "")
        self.answered = 0

    @property
    def type(self) -> str:
        return str(self.payload["type"])

    def verified(self, secret: str = SECRET) -> dict[str, Any]:
        """The body as the library returns it once the signature checks out (raises
        WebhookVerificationError otherwise)."""
        result: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return result


class WebhookReceiver:
    """`mode`: "ok" (204), "fail" (500), "hang" (answers only once released) or "big"
    (200 with a body far over what the service reads). `down()` closes the port and
    `up()` opens it again (same port)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        # A subject this receiver answers 400, whatever the mode (one event it refuses).
        self.refused_subject: str | None = None
        self.deliveries: list[Delivery] = []  # every POST, answered 2xx or not
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def accepted(self) -> list[Delivery]:
        """The deliveries answered 2xx."""
        with self._lock:
            return [d for d in self.deliveries if 200 <= d.answered < 300]

    def up(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                delivery = Delivery(
                    {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
                )
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                mode = receiver.mode
                if mode == "hang":
                    receiver._release.wait(30)
                code = 500 if mode == "fail" else 200 if mode == "big" else 204
                if delivery.payload["data"]["subject"] == receiver.refused_subject:
                    code = 400
                body = b"x" * 10_000_000 if mode == "big" else b""
                delivery.answered = code
                self.send_response(code)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                # The service may stop reading: what a bounded read does.
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> WebhookReceiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
