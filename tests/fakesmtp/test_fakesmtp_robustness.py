"""Abuse: malformed commands, huge lines, non-UTF-8 bytes, broken MIME, vanishing clients.
The server answers per RFC 5321, keeps what it accepted, and keeps serving others."""

from __future__ import annotations

import smtplib

import pytest

from fakesmtp import FakeSMTPServer, replies
from fakesmtp.capture import CapturedMessage
from tests.fakesmtp.helpers import RawClient, make_message

pytestmark = pytest.mark.unit


def assert_still_serving(server: FakeSMTPServer, subject: str = "after") -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message(subject))
    assert server.messages()[0].subject == subject


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", 500),
        (b"BOGUS command", 500),
        (b"MAIL", 503),  # before HELO
        (b"\xff\xfe\x00", 500),
        (b"HELO", 501),
        (b"DATA extra", 503),
    ],
)
def test_malformed_commands_get_an_error_reply(
    fakesmtp: FakeSMTPServer, line: bytes, code: int
) -> None:
    with RawClient(fakesmtp) as client:
        assert client.reply()[0] == 220
        assert client.command(line)[0] == code
        assert client.command(b"NOOP")[0] == 250
    assert_still_serving(fakesmtp)


def test_malformed_addresses_get_syntax_errors(fakesmtp: FakeSMTPServer) -> None:
    with RawClient(fakesmtp) as client:
        client.reply()
        client.command(b"EHLO me")
        assert client.command(b"RCPT TO:<r@example.com>")[0] == 503  # before MAIL
        assert client.command(b"MAIL FROM:")[0] == 501
        assert client.command(b"MAIL TO:<s@example.com>")[0] == 501
        assert client.command(b"MAIL FROM:<s@example.com>")[0] == 250
        assert client.command(b"RCPT TO:")[0] == 501
        assert client.command(b"MAIL FROM:<s@example.com>")[0] == 503  # nested MAIL


def test_a_one_megabyte_command_line_is_refused_and_the_session_continues(
    fakesmtp: FakeSMTPServer,
) -> None:
    with RawClient(fakesmtp) as client:
        client.reply()
        assert client.command(b"NOOP " + b"x" * 1_000_000) == (
            replies.COMMAND_TOO_LONG.code,
            [str(replies.COMMAND_TOO_LONG).encode()],
        )
        assert client.command(b"EHLO me")[0] == 250
    assert_still_serving(fakesmtp)


def test_a_one_megabyte_data_line_is_refused_after_the_dot(fakesmtp: FakeSMTPServer) -> None:
    with RawClient(fakesmtp) as client:
        client.open_transaction()
        assert client.command(b"DATA")[0] == 354
        client.send(b"Subject: long\r\n\r\n" + b"y" * 1_000_000 + b"\r\n.\r\n")
        assert client.reply()[0] == replies.LINE_TOO_LONG.code
        assert client.command(b"NOOP")[0] == 250
    assert fakesmtp.messages() == []
    assert_still_serving(fakesmtp)


def test_non_utf8_message_bytes_are_kept_raw_and_shown_safely(fakesmtp: FakeSMTPServer) -> None:
    raw = b"Subject: caf\xe9\r\nX-Bin: \xff\xfe\r\n\r\nbody \x80\x81 end\r\n"
    with RawClient(fakesmtp) as client:
        client.open_transaction()
        client.command(b"DATA")
        client.send(raw + b".\r\n")
        assert client.reply()[0] == 250
    [message] = fakesmtp.messages()
    assert message.raw == raw
    assert message.subject is not None
    assert "caf" in message.subject
    assert message.text is not None
    assert "body" in message.text
    message.detail()  # JSON-safe strings, no exception


def test_non_utf8_address_is_accepted_and_reported_without_crashing(
    fakesmtp: FakeSMTPServer,
) -> None:
    with RawClient(fakesmtp) as client:
        client.reply()
        client.command(b"EHLO me")
        assert client.command(b"MAIL FROM:<caf\xe9@example.com>")[0] == 250
        client.command(b"RCPT TO:<r@example.com>")
        client.command(b"DATA")
        client.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert client.reply()[0] == 250
    [message] = fakesmtp.messages()
    assert message.mail_from == "caf\ufffd@example.com"
    message.mail_from.encode("utf-8")


@pytest.mark.parametrize(
    "raw",
    [
        b"no headers at all, just text\r\n",
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain;'
        b" charset=klingon\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
        b"Content-Type: multipart/alternative\r\n\r\nno boundary parameter\r\n",
        b'Subject: =?utf-8?q?broken=ZZ?=\r\nContent-Type: text/html; charset="\r\n\r\n<p>x\r\n',
        b'To: <<<@@@>>>, "unterminated\r\nMessage-ID: \r\n\r\n\r\n',
    ],
)
def test_unparseable_mime_is_kept_and_never_raises(raw: bytes) -> None:
    message = CapturedMessage(
        "1", "s@example.com", ["r@example.com"], raw, tls=False, auth_user=None
    )
    detail = message.detail()
    assert detail["raw"] == raw.decode("utf-8", "replace")
    assert isinstance(detail["headers"], list)


def test_parsing_is_lazy(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message("lazy"))
    [message] = fakesmtp.messages()
    assert message._parsed is None
    assert message.subject == "lazy"  # a summary's fields read the headers alone
    assert message._parsed is None
    assert message.text is not None
    assert message._parsed is not None


def test_a_client_that_vanishes_mid_data_stores_nothing_and_harms_no_one(
    fakesmtp: FakeSMTPServer,
) -> None:
    client = RawClient(fakesmtp)
    client.open_transaction()
    client.command(b"DATA")
    client.send(b"Subject: half\r\n\r\nhalf a mess")
    client.close()
    assert_still_serving(fakesmtp)
    assert [m.subject for m in fakesmtp.messages()] == ["after"]


def test_a_client_that_connects_and_leaves_at_once_is_harmless(
    fakesmtp: FakeSMTPServer,
) -> None:
    for _ in range(5):
        RawClient(fakesmtp).close()
    assert_still_serving(fakesmtp)
    assert fakesmtp.stats()["connections"] >= 6


def test_dot_stuffed_lines_are_unstuffed(fakesmtp: FakeSMTPServer) -> None:
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.sendmail(
            "s@example.com", ["r@example.com"], b"Subject: dots\r\n\r\n.leading dot\r\n"
        )
    assert fakesmtp.messages()[0].raw == b"Subject: dots\r\n\r\n.leading dot\r\n"


def test_an_internal_handler_error_answers_451_and_is_reraised_at_stop() -> None:
    server = FakeSMTPServer()
    server.start()
    try:
        # Break the store so that capture raises inside the handler.
        def broken(make: object) -> object:
            raise RuntimeError("store is broken")

        server._state.store.add = broken  # type: ignore[method-assign,assignment]
        with smtplib.SMTP(server.host, server.port, timeout=5) as client:
            client.ehlo()
            client.mail("s@example.com")
            client.rcpt("r@example.com")
            assert client.data(make_message()) == (
                replies.INTERNAL_ERROR.code,
                replies.INTERNAL_ERROR.text.encode(),
            )
    finally:
        with pytest.raises(RuntimeError, match="store is broken"):
            server.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: =?utf-8?q?caf=C3=A9?= ok\r\nMessage-ID:  <a@b> \r\n\r\nx\r\n",
        b"Subject: \xff\xfe caf\xc3\xa9\r\nFrom: \xe9 <a@\xff>\r\n\r\n\xe9\r\n",
        b"Subject: folded\r\n  over two lines\r\nTo: <<<@@@>>>, ,\r\n\r\nx\r\n",
        b"::::\r\n: no name\r\n\r\nno subject\r\n",
        b"",
    ],
)
def test_a_summary_reads_subject_and_id_as_the_whole_parse_does(raw: bytes) -> None:
    quick = CapturedMessage("1", "s@example.com", ["r@example.com"], raw, tls=False, auth_user=None)
    headline = (quick.subject, quick.message_id)  # from the headers alone
    assert quick._parsed is None
    whole = CapturedMessage("2", "s@example.com", ["r@example.com"], raw, tls=False, auth_user=None)
    assert whole.text is not None  # the whole parse first
    assert headline == (whole.subject, whole.message_id)
