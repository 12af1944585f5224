"""Capture, the Python API and the pytest fixtures, over real SMTP connections."""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from fakesmtp import FakeSMTPServer, replies
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import make_message, send_message

pytestmark = pytest.mark.unit


def test_fixture_server_captures_envelope_headers_and_parts(fakesmtp: FakeSMTPServer) -> None:
    raw = make_message("Parts", html="<p>hi</p>", attachment=("report.pdf", b"%PDF-1.4 fake"))
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.sendmail("sender@example.com", ["a@example.com", "b@example.org"], raw)
    [message] = fakesmtp.wait_for(1)
    assert message.mail_from == "sender@example.com"
    assert message.rcpt_tos == ["a@example.com", "b@example.org"]
    assert message.subject == "Parts"
    assert message.message_id == "<Parts@example.com>"
    assert message.text == "plain body\n"
    assert message.html == "<p>hi</p>\n"
    assert message.attachments == ["report.pdf"]
    assert ("Subject", "Parts") in message.headers
    assert message.header("subject") == "Parts"
    assert message.raw == raw
    assert message.size == len(message.raw)
    assert message.tls is False
    assert message.auth_user is None


def test_messages_are_listed_newest_first(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        for n in range(3):
            client.sendmail("s@example.com", ["r@example.com"], make_message(f"m{n}"))
    assert [m.subject for m in fakesmtp.wait_for(3)] == ["m2", "m1", "m0"]


def test_accepted_reply_names_the_stored_id(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        code, text = client.data(make_message())
    [message] = fakesmtp.messages()
    assert code == replies.QUEUED.code
    assert text.decode() == replies.QUEUED.text % message.id


def test_wait_for_times_out_when_too_few_messages(fakesmtp: FakeSMTPServer) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        fakesmtp.wait_for(1, timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_wait_for_wakes_when_a_message_arrives_from_another_thread(
    fakesmtp: FakeSMTPServer,
) -> None:
    def send() -> None:
        time.sleep(0.1)
        with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
            client.sendmail("s@example.com", ["r@example.com"], make_message())

    thread = threading.Thread(target=send)
    thread.start()
    assert len(fakesmtp.wait_for(1, timeout=5)) == 1
    thread.join()


def test_capture_is_bounded_and_drops_the_oldest(fakesmtp_factory: FakeSMTPFactory) -> None:
    server = fakesmtp_factory(max_messages=3)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for n in range(5):
            client.sendmail("s@example.com", ["r@example.com"], make_message(f"m{n}"))
    assert [m.subject for m in server.messages()] == ["m4", "m3", "m2"]
    stats = server.stats()
    assert stats["messages"] == 5
    assert stats["stored"] == 3


def test_clear_messages_forgets_everything(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message())
    fakesmtp.clear_messages()
    assert fakesmtp.messages() == []


def test_message_over_max_size_is_refused_with_552_and_not_kept(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = fakesmtp_factory(max_size=2000)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        # Declared too big in MAIL FROM SIZE=...
        code, _ = client.mail("s@example.com", ["SIZE=5000"])
        assert code == replies.SIZE_TOO_BIG.code
        client.rset()
        # Not declared, found too big while reading DATA.
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        code, _ = client.data(make_message(body=("x" * 70 + "\n") * 60))
        assert code == replies.MESSAGE_TOO_BIG.code
        # A small one still goes through on the same connection.
        client.sendmail("s@example.com", ["r@example.com"], make_message("small"))
    assert [m.subject for m in server.messages()] == ["small"]


def test_server_stops_and_frees_its_port() -> None:
    server = FakeSMTPServer()
    with server:
        port = server.port
        with smtplib.SMTP(server.host, port, timeout=5) as client:
            assert client.noop()[0] == 250
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(server.host, port, timeout=2)


def test_start_reraises_an_error_from_the_server_thread() -> None:
    with FakeSMTPServer() as first:
        clash = FakeSMTPServer(port=first.port)
        with pytest.raises(OSError, match="in use"):
            clash.start()


def test_invalid_options_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        FakeSMTPServer(tls_cert="c.pem")
    with pytest.raises(ValueError, match="implicit_tls"):
        FakeSMTPServer(implicit_tls=True)
    with pytest.raises(ValueError, match="max_messages"):
        FakeSMTPServer(max_messages=0)
    with pytest.raises(ValueError, match="max_size"):
        FakeSMTPServer(max_size=0)
    with pytest.raises(ValueError, match="latency"):
        FakeSMTPServer(latency=-1)
    with pytest.raises(ValueError, match="max_per_connection"):
        FakeSMTPServer(max_per_connection=0)
    with pytest.raises(ValueError, match="rate_limit_code"):
        FakeSMTPServer(rate_limit="1/s", rate_limit_code=450)
    with pytest.raises(ValueError, match="greylist"):
        FakeSMTPServer(greylist=-1)
    with pytest.raises(RuntimeError, match="already started"), FakeSMTPServer() as server:
        server.start()


def test_listeners_hear_of_each_stored_deleted_and_cleared_message(
    fakesmtp: FakeSMTPServer,
) -> None:
    heard: list[tuple[str, str | None]] = []
    unsubscribe = fakesmtp.subscribe(lambda kind, m: heard.append((kind, m and m.id)))
    for n in range(3):
        send_message(fakesmtp, subject=f"m{n}")
    first, second, third = (m.id for m in reversed(fakesmtp.messages()))
    assert fakesmtp.delete_messages([second, "no-such-id"]) == 1
    assert [m.id for m in fakesmtp.messages()] == [third, first]
    fakesmtp.clear_messages()
    unsubscribe()
    send_message(fakesmtp, subject="unheard")
    assert heard == [
        ("message", first),
        ("message", second),
        ("message", third),
        ("delete", second),
        ("clear", None),
    ]
