"""Fixtures for the mailer tests: fakesmtp, settings pointing at it, tiny raw-socket servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.pytest_plugin import fakesmtp, fakesmtp_factory
from service.config import Settings

__all__ = ["fakesmtp", "fakesmtp_factory"]

MakeSettings = Callable[..., Settings]
Handler = Callable[[socket.socket, threading.Event], None]
RawServer = Callable[[Handler], int]


def settings_for(server: FakeSMTPServer | None = None, **overrides: Any) -> Settings:
    options: dict[str, Any] = {"api_key": ["k"], "smtp_host": "127.0.0.1", "smtp_timeout": 5.0}
    if server is not None:
        options["smtp_port"] = server.port
    options.update(overrides)
    return Settings(**options)


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    """Start a hostile TCP server on 127.0.0.1: `handler(conn, stop)` runs per connection
    in a thread; at teardown `stop` is set, sockets are closed and threads joined."""
    stop = threading.Event()
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def serve(listener: socket.socket, handler: Handler) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue  # look at the stop flag again
            except OSError:
                return  # listener closed at teardown
            conn.settimeout(10)  # a handler never blocks for ever either
            with conn:
                try:
                    handler(conn, stop)
                except OSError:
                    pass  # the client hung up: what these servers expect
                except BaseException as exc:  # surfaced at teardown
                    errors.append(exc)

    def start(handler: Handler) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)  # accept() wakes up to see the stop flag
        listeners.append(listener)
        thread = threading.Thread(target=serve, args=(listener, handler), daemon=True)
        thread.start()
        threads.append(thread)
        port: int = listener.getsockname()[1]
        return port

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a raw test server did not stop"
    for listener in listeners:
        listener.close()
    if errors:
        raise errors[0]


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
