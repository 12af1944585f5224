"""SMTPConnection (with send_with_retries where retries matter) against fakesmtp fault
rules, TLS, AUTH, and tiny hostile servers on raw sockets."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import TLSSetupException

from fakesmtp import FakeSMTPServer, FaultRule
from service.mailer import (
    DeliveryError,
    PermanentDeliveryError,
    RejectedRecipient,
    RenderedMessage,
    SMTPConnection,
    TemporaryDeliveryError,
    connection_factory,
)
from service.mailer import smtp as mailer_smtp
from service.retry import RetryPolicy, send_with_retries
from tests.mailer.helpers import FakeFactory, RawServer, message, scripted_smtp, settings_for

pytestmark = pytest.mark.unit


def retry(send: Any, msg: RenderedMessage, attempts: list[DeliveryError | None]) -> Any:
    return send_with_retries(
        send,
        msg,
        RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=60.0, rng=random.Random(0)),
        sleep=lambda _: None,  # no real backoff waits in tests
        on_attempt=lambda _n, err, _decision: attempts.append(err),
    )


@pytest.fixture
def conn(fakesmtp: FakeSMTPServer) -> Any:
    connection = SMTPConnection(settings_for(fakesmtp))
    yield connection
    connection.close()


# ------------------------------------------------------------------- delivery


def test_message_is_delivered_with_its_envelope(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    msg = message(["a@example.com"], cc=["c@example.com"], bcc=["b@example.com"])
    assert conn.send(msg).rejected == []
    [captured] = fakesmtp.wait_for(1)
    assert captured.mail_from == "sender@example.com"
    assert sorted(captured.rcpt_tos) == ["a@example.com", "b@example.com", "c@example.com"]
    assert captured.message_id == msg.message_id
    assert captured.subject == "Hello"
    # The Bcc recipient is only in the envelope. (Searched in every header but
    # Message-ID, whose random hex may end in "b" before "@example.com".)
    headers = [(name, value) for name, value in captured.headers if name.lower() != "message-id"]
    assert not any("b@example.com" in value for _, value in headers)
    assert not any(name.lower() == "bcc" for name, _ in captured.headers)


def test_451_then_success_is_retried(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=451, message="4.7.1 Try later", times=1))
    attempts: list[DeliveryError | None] = []
    retry(conn.send, message(), attempts)
    assert len(attempts) == 2
    first = attempts[0]
    assert isinstance(first, TemporaryDeliveryError)
    assert (first.code, first.reply) == (451, "4.7.1 Try later")
    assert attempts[1] is None
    assert len(fakesmtp.wait_for(1)) == 1


def test_550_is_permanent_and_not_retried(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 No such user"))
    attempts: list[DeliveryError | None] = []
    with pytest.raises(PermanentDeliveryError) as info:
        retry(conn.send, message(["gone@example.com"]), attempts)
    assert len(attempts) == 1
    assert info.value.code == 550
    assert info.value.recipient == "gone@example.com"
    assert fakesmtp.messages() == []


def test_refused_sender_is_classified_and_the_session_is_kept(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    """A refusal at MAIL is followed by RSET, and the same session carries the next."""
    fakesmtp.add_fault(FaultRule(stage="mail", code=553, message="5.7.1 Sender denied", times=1))
    with pytest.raises(PermanentDeliveryError, match=r"553 5\.7\.1 Sender denied"):
        conn.send(message())
    conn.send(message())
    assert len(fakesmtp.wait_for(1)) == 1
    assert fakesmtp.stats()["connections"] == 1
    assert conn.connections_opened == 1


def test_refused_data_and_message_replies_are_classified(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(
        FaultRule(stage="data", code=554, message="5.5.1 No valid recipients", times=1)
    )
    with pytest.raises(PermanentDeliveryError, match="554"):
        conn.send(message())
    fakesmtp.add_fault(FaultRule(stage="message", code=452, message="4.3.1 Disk full", times=1))
    with pytest.raises(TemporaryDeliveryError, match=r"452 4\.3\.1 Disk full"):
        conn.send(message())
    conn.send(message())
    assert len(fakesmtp.wait_for(1)) == 1
    assert fakesmtp.stats()["connections"] == 1


def test_disconnect_mid_data_is_temporary_and_the_next_send_reconnects(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(FaultRule(stage="message", action="disconnect", times=1))
    with pytest.raises(TemporaryDeliveryError, match="connection lost"):
        conn.send(message())
    conn.send(message())
    assert len(fakesmtp.wait_for(1)) == 1
    assert conn.connections_opened == 2


def test_disconnect_at_data_command_is_temporary(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    fakesmtp.add_fault(FaultRule(stage="data", action="disconnect", times=1))
    with pytest.raises(TemporaryDeliveryError):
        conn.send(message())


def test_slow_reply_hits_smtp_timeout(fakesmtp_factory: FakeFactory) -> None:
    server = fakesmtp_factory(faults=[FaultRule(stage="mail", action="delay", delay=3.0)])
    connection = SMTPConnection(settings_for(server, smtp_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError, match="timed out"):
        connection.send(message())
    assert time.monotonic() - started < 2.5
    connection.close()


def test_connection_refused_is_temporary() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.
    connection = SMTPConnection(settings_for(smtp_port=port))
    with pytest.raises(TemporaryDeliveryError, match="refused") as info:
        connection.send(message())
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_greeting_refused_with_554_is_permanent(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    fakesmtp.add_fault(FaultRule(stage="connect", code=554, message="No service"))
    with pytest.raises(PermanentDeliveryError, match="554"):
        conn.send(message())


def test_partial_rejection_is_reported_and_others_get_the_message(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(
        FaultRule(stage="rcpt", code=550, message="5.1.1 No such user", match="^bad@")
    )
    result = conn.send(message(["good@example.com", "bad@example.com", "fine@example.com"]))
    assert result.rejected == [
        RejectedRecipient("bad@example.com", 550, "5.1.1 No such user"),
    ]
    [captured] = fakesmtp.wait_for(1)
    assert sorted(captured.rcpt_tos) == ["fine@example.com", "good@example.com"]


def test_all_recipients_refused_raises_temporary_if_any_was_4xx(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 No", match="^a@"))
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=452, message="4.2.2 Full", match="^b@"))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(message(["a@example.com", "b@example.com"]))
    assert info.value.code == 452
    assert "a@example.com: 550" in info.value.reply
    fakesmtp.clear_faults()
    conn.send(message())  # the session was reset and still works
    assert fakesmtp.stats()["connections"] == 1


def test_all_recipients_refused_permanently_raises_permanent(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 No"))
    with pytest.raises(PermanentDeliveryError):
        conn.send(message(["a@example.com", "b@example.com"]))


def test_421_to_rcpt_drops_the_session(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=421, message="4.3.2 Closing", times=1))
    with pytest.raises(TemporaryDeliveryError, match="421"):
        conn.send(message())
    assert not conn.is_open
    conn.send(message())
    assert conn.connections_opened == 2


def test_smtputf8_message_is_sent_with_smtputf8(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    msg = message(["José <josé@example.com>"])
    assert msg.smtputf8
    conn.send(msg)
    [captured] = fakesmtp.wait_for(1)
    assert captured.rcpt_tos == ["josé@example.com"]


# ------------------------------------------------------------------ TLS and AUTH


def test_starttls_with_self_signed_cert_and_ca_file(
    fakesmtp_factory: FakeFactory, certs: tuple[str, str]
) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key, require_tls=True)
    connection = SMTPConnection(
        settings_for(server, smtp_security="starttls", smtp_ca_file=cert, smtp_host="localhost")
    )
    connection.send(message())
    connection.send(message())
    connection.close()
    captured = server.wait_for(2)
    assert all(m.tls for m in captured)
    assert server.stats()["connections"] == 1


def test_implicit_tls(fakesmtp_factory: FakeFactory, certs: tuple[str, str]) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key, implicit_tls=True)
    connection = SMTPConnection(settings_for(server, smtp_security="ssl", smtp_ca_file=cert))
    connection.send(message())
    connection.close()
    assert server.wait_for(1)[0].tls


def test_untrusted_certificate_is_permanent(certs: tuple[str, str]) -> None:
    cert, key = certs
    server = FakeSMTPServer(tls_cert=cert, tls_key=key)
    server.start()
    try:
        connection = SMTPConnection(settings_for(server, smtp_security="starttls"))
        with pytest.raises(PermanentDeliveryError, match="certificate"):
            connection.send(message())
        assert server.messages() == []
    finally:
        # fakesmtp records the handshake our client aborts as an internal error
        # (aiosmtpd's TLSSetupException) and re-raises it at stop: that is the
        # behaviour under test, not a fault of the fake.
        with contextlib.suppress(TLSSetupException):
            server.stop()


def test_implicit_tls_untrusted_certificate_is_permanent(
    fakesmtp_factory: FakeFactory, certs: tuple[str, str]
) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key, implicit_tls=True)
    connection = SMTPConnection(settings_for(server, smtp_security="ssl"))
    with pytest.raises(PermanentDeliveryError, match="certificate"):
        connection.send(message())


def test_verify_tls_false_accepts_an_untrusted_certificate(
    fakesmtp_factory: FakeFactory, certs: tuple[str, str]
) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key)
    connection = SMTPConnection(
        settings_for(server, smtp_security="starttls", smtp_verify_tls=False)
    )
    connection.send(message())
    connection.close()
    assert server.wait_for(1)[0].tls


def test_starttls_not_offered_is_a_permanent_failure_not_a_downgrade(
    fakesmtp: FakeSMTPServer,
) -> None:
    connection = SMTPConnection(settings_for(fakesmtp, smtp_security="starttls"))
    with pytest.raises(PermanentDeliveryError, match="does not offer STARTTLS"):
        connection.send(message())
    assert fakesmtp.messages() == []
    assert not connection.is_open


def test_ssl_against_a_plain_server_is_permanent(fakesmtp: FakeSMTPServer) -> None:
    connection = SMTPConnection(settings_for(fakesmtp, smtp_security="ssl", smtp_timeout=2.0))
    with pytest.raises(PermanentDeliveryError, match="TLS"):
        connection.send(message())


def test_missing_ca_file_is_permanent(fakesmtp: FakeSMTPServer, tmp_path: Path) -> None:
    connection = SMTPConnection(
        settings_for(fakesmtp, smtp_security="starttls", smtp_ca_file=tmp_path / "none.pem")
    )
    with pytest.raises(PermanentDeliveryError, match="SMTP_CA_FILE"):
        connection.send(message())


def test_connection_factory_leaves_a_missing_ca_file_to_the_send(
    fakesmtp: FakeSMTPServer, tmp_path: Path
) -> None:
    """The factory itself never raises: the message that needed TLS fails instead."""
    connect = connection_factory(
        settings_for(fakesmtp, smtp_security="starttls", smtp_ca_file=tmp_path / "none.pem")
    )
    connection = connect()
    with pytest.raises(PermanentDeliveryError, match="SMTP_CA_FILE"):
        connection.send(message())


def test_auth_ok(fakesmtp_factory: FakeFactory, certs: tuple[str, str]) -> None:
    cert, key = certs
    server = fakesmtp_factory(tls_cert=cert, tls_key=key, auth=("user", "s3cret"))
    connection = SMTPConnection(
        settings_for(
            server,
            smtp_security="starttls",
            smtp_ca_file=cert,
            smtp_username="user",
            smtp_password="s3cret",
        )
    )
    connection.send(message())
    connection.close()
    assert server.wait_for(1)[0].auth_user == "user"


def test_auth_rejected_is_permanent_535_and_hides_the_password(
    fakesmtp_factory: FakeFactory,
) -> None:
    server = fakesmtp_factory(auth=("user", "right-password"))
    connection = SMTPConnection(
        settings_for(server, smtp_username="user", smtp_password="wrong-password")
    )
    attempts: list[DeliveryError | None] = []
    with pytest.raises(PermanentDeliveryError) as info:
        retry(connection.send, message(), attempts)
    assert info.value.code == 535
    assert len(attempts) == 1
    assert "wrong-password" not in str(info.value)
    assert server.messages() == []


# ---------------------------------------------------------- connection reuse


def test_one_connection_carries_many_messages(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    for i in range(10):
        conn.send(message(subject=f"m{i}"))
    assert len(fakesmtp.wait_for(10)) == 10
    assert fakesmtp.stats()["connections"] == 1
    assert conn.connections_opened == 1


def test_per_connection_message_cap(fakesmtp: FakeSMTPServer) -> None:
    connection = SMTPConnection(settings_for(fakesmtp, smtp_max_messages_per_connection=2))
    for _ in range(5):
        connection.send(message())
    connection.close()
    assert fakesmtp.stats()["connections"] == 3
    assert len(fakesmtp.wait_for(5)) == 5


def test_idle_connection_is_closed_and_replaced(fakesmtp: FakeSMTPServer) -> None:
    now = [1000.0]
    connection = SMTPConnection(
        settings_for(fakesmtp, smtp_idle_timeout=30.0), clock=lambda: now[0]
    )
    connection.send(message())
    now[0] += 29.0
    connection.send(message())
    assert connection.connections_opened == 1
    now[0] += 31.0
    connection.send(message())
    assert connection.connections_opened == 2
    connection.close()
    assert fakesmtp.stats()["connections"] == 2


def test_relay_cap_421_on_reused_connection_costs_no_attempt(
    fakesmtp_factory: FakeFactory,
) -> None:
    """A relay that says 421 at MAIL after N messages: we reconnect inside send()."""
    server = fakesmtp_factory(max_per_connection=2)
    connection = SMTPConnection(settings_for(server))
    for _ in range(5):
        connection.send(message())  # never raises
    connection.close()
    assert len(server.wait_for(5)) == 5
    assert server.stats()["connections"] == 3


def test_server_side_close_while_idle_costs_no_attempt(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    conn.send(message())
    # The relay drops the idle session: the next MAIL finds it gone.
    fakesmtp.add_fault(FaultRule(stage="mail", action="disconnect", times=1))
    conn.send(message())
    assert len(fakesmtp.wait_for(2)) == 2
    assert conn.connections_opened == 2


def test_failure_at_mail_on_a_fresh_connection_is_reported(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    """The stale-session retry is for reused sessions: a fresh one failing is news."""
    fakesmtp.add_fault(FaultRule(stage="mail", action="disconnect", times=1))
    with pytest.raises(TemporaryDeliveryError, match="connection lost"):
        conn.send(message())
    assert conn.connections_opened == 1
    conn.send(message())
    assert len(fakesmtp.wait_for(1)) == 1


def test_stale_session_is_retried_only_once(fakesmtp: FakeSMTPServer, conn: Any) -> None:
    conn.send(message())
    fakesmtp.add_fault(FaultRule(stage="mail", action="disconnect", times=2))
    with pytest.raises(TemporaryDeliveryError):
        conn.send(message())
    assert conn.connections_opened == 2
    conn.send(message())
    assert len(fakesmtp.wait_for(2)) == 2


def test_421_at_mail_on_a_fresh_connection_is_temporary(
    fakesmtp: FakeSMTPServer, conn: Any
) -> None:
    fakesmtp.add_fault(FaultRule(stage="mail", code=421, message="4.7.0 Busy", times=1))
    with pytest.raises(TemporaryDeliveryError, match="421"):
        conn.send(message())
    assert not conn.is_open


# ------------------------------------------------------------ hostile servers


def _greet_then(conn: socket.socket, ehlo_reply: bytes) -> None:
    conn.sendall(b"220 raw ESMTP\r\n")
    conn.recv(1024)  # EHLO
    conn.sendall(ehlo_reply)


def test_server_that_never_answers_times_out(raw_server: RawServer) -> None:
    def silent(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait()

    port = raw_server(silent)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError, match="timed out"):
        connection.send(message())
    assert time.monotonic() - started < 2.0


def test_one_byte_per_tick_drip_is_bounded_by_an_overall_deadline(raw_server: RawServer) -> None:
    """Each byte comes well within SMTP_TIMEOUT, so a per-recv timeout never fires;
    the reply as a whole must still be complete within SMTP_TIMEOUT."""

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            conn.sendall(b"2")

    port = raw_server(drip)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=1.0))
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError, match="timed out"):
        connection.send(message())
    assert time.monotonic() - started < 3.0


def test_endless_line_is_cut_off(raw_server: RawServer) -> None:
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        chunk = b"x" * 4096
        while not stop.is_set():
            conn.sendall(chunk)

    port = raw_server(endless)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=5.0))
    with pytest.raises(TemporaryDeliveryError, match="longer than 8192 bytes"):
        connection.send(message())


def test_endless_multiline_reply_is_cut_off(raw_server: RawServer) -> None:
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            conn.sendall(b"220-still greeting\r\n" * 50)

    port = raw_server(endless)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=5.0))
    with pytest.raises(TemporaryDeliveryError, match="longer than 200 lines"):
        connection.send(message())


def test_garbage_greeting_is_temporary(raw_server: RawServer) -> None:
    def garbage(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        stop.wait(1)

    port = raw_server(garbage)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=2.0))
    with pytest.raises(TemporaryDeliveryError) as info:
        connection.send(message())
    assert info.value.code is None


def test_smtputf8_not_offered_is_permanent_with_a_clear_text(raw_server: RawServer) -> None:
    def no_smtputf8(conn: socket.socket, stop: threading.Event) -> None:
        _greet_then(conn, b"250-raw\r\n250 8BITMIME\r\n")
        conn.recv(1024)  # QUIT, or the client hanging up
        conn.sendall(b"221 bye\r\n")

    port = raw_server(no_smtputf8)
    connection = SMTPConnection(settings_for(smtp_port=port))
    with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
        connection.send(message(["josé@example.com"]))
    connection.close()


def test_auth_not_offered_with_credentials_set_is_permanent(raw_server: RawServer) -> None:
    def no_auth(conn: socket.socket, stop: threading.Event) -> None:
        _greet_then(conn, b"250 raw\r\n")
        stop.wait(1)

    port = raw_server(no_auth)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_username="u", smtp_password="p"))
    with pytest.raises(PermanentDeliveryError, match="AUTH"):
        connection.send(message())


def test_smtputf8_and_8bitmime_are_requested_when_offered(raw_server: RawServer) -> None:
    seen: list[bytes] = []

    def recording(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"220 raw ESMTP\r\n")
        reader = conn.makefile("rb")
        reader.readline()
        conn.sendall(b"250-raw\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 SIZE 100000\r\n")
        seen.append(reader.readline())  # MAIL
        conn.sendall(b"421 go away\r\n")

    port = raw_server(recording)
    connection = SMTPConnection(settings_for(smtp_port=port))
    with pytest.raises(TemporaryDeliveryError):
        connection.send(message(["josé@example.com"]))
    [mail] = seen
    assert mail.upper().startswith(b"MAIL FROM:<SENDER@EXAMPLE.COM>")
    assert b" SMTPUTF8" in mail
    assert b" BODY=8BITMIME" in mail
    assert b" SIZE=" in mail


def test_message_over_the_relay_size_limit_is_permanent(fakesmtp_factory: FakeFactory) -> None:
    server = fakesmtp_factory(max_size=200)
    connection = SMTPConnection(settings_for(server))
    with pytest.raises(PermanentDeliveryError, match="552"):
        connection.send(message(subject="x " * 200))
    connection.close()


def test_failed_rset_drops_the_session(raw_server: RawServer) -> None:
    port = raw_server(
        scripted_smtp({"RCPT": b"550 no such user\r\n", "RSET": b"502 not implemented\r\n"})
    )
    connection = SMTPConnection(settings_for(smtp_port=port))
    with pytest.raises(PermanentDeliveryError, match="550"):
        connection.send(message())
    assert not connection.is_open


def test_rset_that_gets_no_answer_drops_the_session(raw_server: RawServer) -> None:
    port = raw_server(scripted_smtp({"MAIL": b"451 later\r\n", "RSET": b""}))
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=0.3))
    with pytest.raises(TemporaryDeliveryError, match="451"):
        connection.send(message())
    assert not connection.is_open


def test_connection_reset_while_reading_a_reply_is_temporary(raw_server: RawServer) -> None:
    def reset(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"220 raw ESMTP\r\n")
        conn.recv(1024)
        # SO_LINGER 0: close() sends RST, so the client's recv fails with ECONNRESET.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = raw_server(reset)
    connection = SMTPConnection(settings_for(smtp_port=port))
    with pytest.raises(TemporaryDeliveryError, match="connection lost"):
        connection.send(message())


def _accept_until_data(conn: socket.socket) -> Any:
    reader = conn.makefile("rb")
    conn.sendall(b"220 raw ESMTP\r\n")
    for reply in (b"250 raw\r\n", b"250 OK\r\n", b"250 OK\r\n", b"354 go on\r\n"):
        reader.readline()  # EHLO, MAIL, RCPT, DATA
        conn.sendall(reply)
    return reader


def test_server_that_stops_reading_the_message_is_bounded(
    raw_server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that never reads the message body cannot hold a thread for ever."""
    monkeypatch.setattr(mailer_smtp, "_MIN_SEND_RATE", 1e12)  # the budget is SMTP_TIMEOUT alone

    def stalls(conn: socket.socket, stop: threading.Event) -> None:
        _accept_until_data(conn)
        stop.wait()

    port = raw_server(stalls)
    connection = SMTPConnection(settings_for(smtp_port=port, smtp_timeout=0.5))
    big = message()
    big = RenderedMessage(big.message_id, big.mail_from, big.rcpt_tos, big.data + b"x" * 32_000_000)
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError, match="timed out"):
        connection.send(big)
    assert time.monotonic() - started < 3.0


def test_server_that_resets_during_the_message_is_temporary(raw_server: RawServer) -> None:
    def resets(conn: socket.socket, stop: threading.Event) -> None:
        reader = _accept_until_data(conn)
        reader.read(1000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = raw_server(resets)
    connection = SMTPConnection(settings_for(smtp_port=port))
    big = message()
    big = RenderedMessage(big.message_id, big.mail_from, big.rcpt_tos, big.data + b"x" * 32_000_000)
    with pytest.raises(TemporaryDeliveryError, match="connection lost"):
        connection.send(big)


def test_close_after_the_relay_went_away_does_not_raise(fakesmtp_factory: FakeFactory) -> None:
    server = fakesmtp_factory()
    connection = SMTPConnection(settings_for(server))
    connection.send(message())
    server.stop()
    connection.close()  # QUIT fails; the socket is closed anyway
    assert not connection.is_open


def test_plaintext_injected_after_starttls_is_discarded(
    raw_server: RawServer, certs: tuple[str, str]
) -> None:
    """Bytes sent in clear after "220" to STARTTLS (CVE-2011-0411 style) must not be
    read as the first reply inside TLS: here they would fake an SMTPUTF8 offer."""
    cert, key = certs
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    def injecting(conn: socket.socket, stop: threading.Event) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"220 raw ESMTP\r\n")
        reader.readline()  # EHLO
        conn.sendall(b"250-raw\r\n250 STARTTLS\r\n")
        reader.readline()  # STARTTLS
        conn.sendall(b"220 go ahead\r\n250-injected\r\n250 SMTPUTF8\r\n")
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls_reader = tls.makefile("rb")
            tls_reader.readline()  # EHLO, inside TLS
            tls.sendall(b"250 raw\r\n")  # the true answer: no SMTPUTF8
            while tls_reader.readline() not in (b"", b"QUIT\r\n"):
                tls.sendall(b"250 OK\r\n")
            tls.sendall(b"221 bye\r\n")

    port = raw_server(injecting)
    connection = SMTPConnection(
        settings_for(smtp_port=port, smtp_security="starttls", smtp_ca_file=cert)
    )
    with pytest.raises(PermanentDeliveryError, match="does not offer SMTPUTF8"):
        connection.send(message(["josé@example.com"]))
    connection.close()
