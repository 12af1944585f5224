"""GET /api/events: captures, deletions and clears pushed as server-sent events at once;
slow clients bounded, vanished ones let go, every stream ended when the server stops."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from fakesmtp import CapturedMessage, FakeSMTPServer
from fakesmtp.client import Event, parse_events
from fakesmtp.events import EventHub, EventStream, encode
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import make_message, send_message
from tests.helpers import wait_until

pytestmark = pytest.mark.unit


@pytest.fixture
def events(http: httpx.Client) -> Iterator[Iterator[Event]]:
    """An open GET /api/events, past its `ready` event."""
    with http.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        stream = parse_events(response.iter_lines())
        assert next(stream) == Event("ready", {})
        yield stream


def test_a_captured_message_is_pushed_as_its_summary_in_the_list(
    server: FakeSMTPServer, http: httpx.Client, events: Iterator[Event]
) -> None:
    send_message(server, "pushed")
    event = next(events)
    assert event.name == "message"
    assert event.data["subject"] == "pushed"
    assert [event.data] == http.get("/api/messages").json()["messages"]


def test_each_message_of_a_burst_is_one_event_in_order(
    server: FakeSMTPServer, events: Iterator[Event]
) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for n in range(20):
            client.sendmail("s@example.com", ["r@example.com"], make_message(f"burst {n}"))
    subjects = [next(events).data["subject"] for _ in range(20)]
    assert subjects == [f"burst {n}" for n in range(20)]


def test_deletions_and_clears_are_pushed_from_any_thread(
    server: FakeSMTPServer, http: httpx.Client, events: Iterator[Event]
) -> None:
    send_message(server, "kept")
    send_message(server, "deleted")
    assert [next(events).data["subject"] for _ in range(2)] == ["kept", "deleted"]
    deleted = server.wait_for(lambda m: m.subject == "deleted")
    assert server.delete_messages([deleted.id]) == 1  # on this, the test's thread
    event = next(events)
    assert event.name == "delete"
    assert (event.data["id"], event.data["subject"]) == (deleted.id, "deleted")
    assert http.delete("/api/messages").status_code == 204  # on the server's loop
    assert next(events) == Event("clear", {})


def test_the_stream_ends_after_its_timeout_parameter(
    http: httpx.Client,
) -> None:
    started = time.monotonic()
    with http.stream("GET", "/api/events", params={"timeout": "0.3"}) as response:
        names = [event.name for event in parse_events(response.iter_lines())]
    assert names == ["ready"]
    assert 0.3 <= time.monotonic() - started < 3


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_400(http: httpx.Client, value: str) -> None:
    response = http.get("/api/events", params={"timeout": value})
    assert response.status_code == 400
    assert "timeout" in response.json()["detail"]


def test_stop_ends_open_streams_without_waiting_for_them(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = fakesmtp_factory(http_port=0)
    with (
        httpx.Client(base_url=str(server.http_url), timeout=5) as http,
        http.stream("GET", "/api/events") as response,
    ):
        stream = parse_events(response.iter_lines())
        assert next(stream).name == "ready"
        assert server.stats()["event_streams"] == 1
        started = time.monotonic()
        server.stop()
        # uvicorn would give an open response 2 s before cutting it off.
        assert time.monotonic() - started < 1.5
        assert list(stream) == []  # ended cleanly: the chunked body's last chunk came


def test_a_client_that_vanishes_is_let_go(server: FakeSMTPServer) -> None:
    with socket.create_connection((server.host, server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: fakesmtp\r\n\r\n")
        received = b""
        while b"event: ready" not in received:
            received += sock.recv(4096)
        assert server.stats()["event_streams"] == 1
    # Nothing to await from here: the server notices the hang-up on its own loop.
    wait_until(lambda: server.stats()["event_streams"] == 0, what="the stream let go")
    send_message(server, "after")  # and capture goes on as before
    assert server.wait_for_count(1)[0].subject == "after"


# The hub itself, on a loop of the test's own: what a slow client costs -------------


MESSAGES = [
    CapturedMessage(
        str(n), "s@example.com", ["r@example.com"], make_message(f"m{n}"), tls=False, auth_user=None
    )
    for n in range(11)
]


def test_a_slow_stream_holds_at_most_its_queue_then_gets_a_gap_where_events_were_lost() -> None:
    async def scenario() -> list[bytes]:
        hub = EventHub(lambda listener: lambda: None, queue_size=3)
        hub.start()
        stream = EventStream(hub.queue_size)
        hub.attach(stream)
        chunks = stream.chunks(keepalive=60, duration=None)
        written = [await anext(chunks)]  # ready; then the client stops reading
        for n in range(10):
            hub.listener("message", MESSAGES[n])  # returns at once: capture never waits
        await asyncio.sleep(0)  # the loop runs the hand-overs
        assert len(stream.pending) == 3
        assert stream.missed == 7
        written += [await anext(chunks), await anext(chunks)]  # it reads again
        hub.listener("message", MESSAGES[10])
        await asyncio.sleep(0)
        written.append(await anext(chunks))
        hub.close()
        written += [chunk async for chunk in chunks]
        assert len(hub) == 1  # the response releases it; here nobody has
        hub.release(stream)
        assert len(hub) == 0
        return written

    ready, backlog, gap, after = asyncio.run(scenario())
    assert b"event: ready" in ready
    assert backlog == b"".join(encode("message", m.summary()) for m in MESSAGES[:3])
    assert gap == encode("gap", {"missed": 7})
    assert after == encode("message", MESSAGES[10].summary())


def test_a_change_on_another_thread_reaches_the_stream_on_the_loop() -> None:
    async def scenario() -> bytes:
        hub = EventHub(lambda listener: lambda: None)
        hub.start()
        stream = EventStream(hub.queue_size)
        hub.attach(stream)
        chunks = stream.chunks(keepalive=60, duration=None)
        await anext(chunks)
        thread = threading.Thread(target=hub.listener, args=("clear", None))
        thread.start()
        chunk = await anext(chunks)
        thread.join()
        return chunk

    assert asyncio.run(scenario()) == encode("clear", {})


def test_silence_is_broken_by_a_keep_alive_comment() -> None:
    async def scenario() -> bytes:
        hub = EventHub(lambda listener: lambda: None, keepalive=0.05)
        stream = EventStream(hub.queue_size)
        hub.attach(stream)
        chunks = stream.chunks(hub.keepalive, duration=None)
        await anext(chunks)
        return await anext(chunks)

    assert asyncio.run(scenario()) == b": keep-alive\n\n"


def test_a_stream_opened_on_a_closed_hub_ends_after_ready() -> None:
    async def scenario() -> list[bytes]:
        hub = EventHub(lambda listener: lambda: None)
        hub.start()
        hub.close()
        stream = EventStream(hub.queue_size)
        hub.attach(stream)
        assert len(hub) == 0
        return [chunk async for chunk in stream.chunks(60, None)]

    (ready,) = asyncio.run(scenario())
    assert b"event: ready" in ready
