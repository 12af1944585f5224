"""Fixtures for the mailer tests: fakesmtp, a throwaway certificate, tiny raw-socket servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.certs import make_self_signed
from fakesmtp.pytest_plugin import FakeSMTPFactory, fakesmtp_factory
from tests.mailer.helpers import Handler, RawServer

__all__ = ["fakesmtp", "fakesmtp_factory"]


@pytest.fixture(params=["chunking", "pipelining", "one-at-a-time"])
def fakesmtp(request: pytest.FixtureRequest, fakesmtp_factory: FakeSMTPFactory) -> FakeSMTPServer:
    """fakesmtp offering PIPELINING and CHUNKING (the client's one-round-trip path),
    PIPELINING alone (two round trips), and neither (one command per round trip):
    every connection test runs against all three."""
    return fakesmtp_factory(
        pipelining=request.param != "one-at-a-time", chunking=request.param == "chunking"
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate and key for 127.0.0.1/localhost, one per module."""
    return make_self_signed(tmp_path_factory.mktemp("certs"))


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
