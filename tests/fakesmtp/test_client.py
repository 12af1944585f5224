"""FakeSMTPClient: the mail of a fakesmtp in another process, waited for on its event stream."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.client import FakeSMTPClient, MessageSummary
from tests.fakesmtp.helpers import make_message, send_message

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(server: FakeSMTPServer) -> Iterator[FakeSMTPClient]:
    assert server.http_url is not None
    with FakeSMTPClient(server.http_url + "/") as result:
        yield result


@pytest.mark.unit
def test_messages_message_and_clear(server: FakeSMTPServer, client: FakeSMTPClient) -> None:
    send_message(server, "first")
    send_message(server, "second")
    listed = client.messages()
    assert [m.subject for m in listed] == ["second", "first"]
    held = server.messages()[0]
    assert listed[0] == MessageSummary(
        id=held.id,
        mail_from="sender@example.com",
        rcpt_tos=["rcpt@example.com"],
        subject="second",
        message_id="<second@example.com>",
        received_at=held.received_at,
        size=held.size,
        tls=False,
        auth_user=None,
    )
    assert client.message(held.id)["text"] == "plain body\n"
    with pytest.raises(httpx.HTTPStatusError):
        client.message("999")
    client.clear()
    assert client.messages() == []


@pytest.mark.unit
def test_wait_for_returns_a_held_message_oldest_match_first(
    server: FakeSMTPServer, client: FakeSMTPClient
) -> None:
    for subject in ("order 1", "invoice", "order 2"):
        send_message(server, subject)
    found = client.wait_for(lambda m: (m.subject or "").startswith("order"), timeout=5)
    assert found.subject == "order 1"


@pytest.mark.unit
def test_wait_for_returns_a_message_that_arrives_while_it_waits(
    server: FakeSMTPServer, client: FakeSMTPClient
) -> None:
    """Sent only once the client has looked at what is held: it can only come as an event."""
    send_message(server, "unrelated")
    looking = threading.Event()

    def welcome(message: MessageSummary) -> bool:
        looking.set()
        return message.subject == "welcome"

    def send() -> None:
        assert looking.wait(5)
        send_message(server, "also unrelated")
        send_message(server, "welcome")

    sender = threading.Thread(target=send)
    sender.start()
    started = time.monotonic()
    found = client.wait_for(welcome, timeout=10)
    sender.join()
    assert found.subject == "welcome"
    assert found.id == server.wait_for(lambda m: m.subject == "welcome").id
    assert time.monotonic() - started < 5  # at once, not at the timeout


@pytest.mark.unit
def test_wait_for_gives_up_at_its_timeout_saying_what_was_held(
    server: FakeSMTPServer, client: FakeSMTPClient
) -> None:
    send_message(server, "something else")

    def is_the_reset_mail(message: MessageSummary) -> bool:
        return message.subject == "Reset your password"

    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        client.wait_for(is_the_reset_mail, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.5
    text = str(raised.value)
    assert text.startswith(f"no message at {server.http_url} matched ")
    assert ".is_the_reset_mail within 0.5s; 1 held (newest first: 'something else')" in text


@pytest.mark.unit
def test_wait_for_count_counts_what_is_held_and_what_arrives(
    server: FakeSMTPServer, client: FakeSMTPClient
) -> None:
    send_message(server, "one")
    assert [m.subject for m in client.wait_for_count(1, timeout=5)] == ["one"]
    sender = threading.Thread(target=lambda: [send_message(server, s) for s in ("two", "three")])
    sender.start()
    got = client.wait_for_count(3, timeout=10)
    sender.join()
    assert [m.subject for m in got] == ["three", "two", "one"]
    with pytest.raises(TimeoutError, match="expected at least 4 message"):
        client.wait_for_count(4, timeout=0.3)


@pytest.mark.unit
def test_after_a_gap_the_client_lists_again_and_finds_what_it_missed() -> None:
    """A gap means the server dropped events for this stream: only a new list shows them."""
    summary = {
        "id": "7", "mail_from": "s@example.com", "rcpt_tos": ["r@example.com"],
        "subject": "missed", "message_id": "<m@example.com>",
        "received_at": "2026-12-02T10:00:00+00:00", "size": 10, "tls": False, "auth_user": None,
    }  # fmt: skip
    listings = iter([[], [summary]])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/events":
            stream = 'event: ready\ndata: {}\n\n: keep-alive\n\nevent: gap\ndata: {"missed": 3}\n\n'
            return httpx.Response(200, text=stream)
        messages = next(listings)
        return httpx.Response(200, json={"total": len(messages), "messages": messages})

    with FakeSMTPClient("http://fakesmtp", transport=httpx.MockTransport(handler)) as client:
        found = client.wait_for(lambda m: m.subject == "missed", timeout=1)
    assert found.id == "7"


@pytest.mark.e2e
def test_the_client_waits_on_python_m_fakesmtp_in_another_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fakesmtp", "--port", "0", "--http-port", "auto"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ready = re.search(r"SMTP on ([\d.]+):(\d+) HTTP on (http://\S+)", line)
        assert ready, line

        def send() -> None:
            with smtplib.SMTP(ready[1], int(ready[2]), timeout=5) as smtp:
                smtp.sendmail("s@example.com", ["far@example.com"], make_message("from afar"))

        with FakeSMTPClient(ready[3]) as client:
            sender = threading.Thread(target=send)
            sender.start()
            found = client.wait_for(lambda m: m.subject == "from afar", timeout=10)
            sender.join()
            assert found.rcpt_tos == ["far@example.com"]
            assert "Subject: from afar" in client.message(found.id)["raw"]
    finally:
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0
