"""Helpers for the mailer tests: settings pointing at a relay, rendered messages, and
tiny line-by-line SMTP servers for what fakesmtp cannot do."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from fakesmtp import FakeSMTPServer
from service.config import Settings
from service.mailer import RenderedMessage, render_message
from service.models import SendRequest

# The `raw_server` fixture: start `handler(conn, stop)` per connection, get the port.
Handler = Callable[[socket.socket, threading.Event], None]
RawServer = Callable[[Handler], int]
FakeFactory = Any  # fakesmtp.pytest_plugin.FakeSMTPFactory


def settings_for(server: FakeSMTPServer | None = None, **overrides: Any) -> Settings:
    options: dict[str, Any] = {"api_key": ["k"], "smtp_host": "127.0.0.1", "smtp_timeout": 5.0}
    if server is not None:
        options["smtp_port"] = server.port
    options.update(overrides)
    return Settings(**options)


def message(
    to: list[str] | None = None, *, subject: str = "Hello", **fields: Any
) -> RenderedMessage:
    request = SendRequest.model_validate(
        {"to": to or ["rcpt@example.com"], "subject": subject, "body": "Body\n", **fields}
    )
    return render_message(request, default_from="sender@example.com")


def scripted_smtp(replies: dict[str, bytes], *, ehlo: bytes = b"250 raw\r\n") -> Handler:
    """A minimal line-by-line SMTP server answering each verb from `replies` (default
    `250 OK`): enough to script what fakesmtp cannot do, such as refusing RSET."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"220 raw ESMTP\r\n")
        while not stop.is_set():
            line = reader.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper().decode()
            if verb == "EHLO":
                conn.sendall(ehlo)
            elif verb == "DATA" and "DATA" not in replies:
                conn.sendall(b"354 go on\r\n")
                while reader.readline() not in (b".\r\n", b""):
                    pass
                conn.sendall(replies.get("DOT", b"250 OK queued\r\n"))
            else:
                conn.sendall(replies.get(verb, b"250 OK\r\n"))
                if verb == "QUIT":
                    return

    return handler
