"""The ``bounce`` fault action: accept with 250, then send the sender an RFC 3464 DSN
through a second fakesmtp acting as the bounce relay."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage, Message, MIMEPart
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakesmtp import FakeSMTPServer, FaultRule, FaultSpecError, ServerOptions, replies
from fakesmtp.cli import build_parser, main
from fakesmtp.dsn import build_dsn, status_for
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import RawClient, make_message
from tests.helpers import wait_until

pytestmark = pytest.mark.unit


@pytest.fixture
def relay(fakesmtp_factory: FakeSMTPFactory) -> FakeSMTPServer:
    """The server bounces go through; started first, so it stops last."""
    server: FakeSMTPServer = fakesmtp_factory()
    return server


def bouncing(
    factory: FakeSMTPFactory, relay: FakeSMTPServer | None, *rules: FaultRule, **options: Any
) -> FakeSMTPServer:
    bounce_relay = None if relay is None else (relay.host, relay.port)
    server: FakeSMTPServer = factory(faults=list(rules), bounce_relay=bounce_relay, **options)
    return server


def send(
    server: FakeSMTPServer,
    sender: str,
    recipients: list[str],
    subject: str = "Hello",
    mail_options: Sequence[str] = (),
) -> tuple[int, bytes]:
    """Send one message from the envelope ``sender``; the reply to its final dot."""
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        assert client.mail(sender, mail_options)[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        return client.data(make_message(subject))


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def report_parts(dsn: EmailMessage) -> tuple[MIMEPart, list[Message], Message]:
    """The human part, the delivery-status blocks and the original headers of a DSN."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, status, headers = dsn.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    payload = status.get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    assert len(blocks) == len(payload)
    return human, blocks, message_from_string(headers.get_content())


def test_a_bounce_rule_accepts_the_message_then_sends_the_sender_a_dsn(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    rule = FaultRule("message", "bounce", 550, "5.1.1 No such user")
    server = bouncing(fakesmtp_factory, relay, rule)

    code, text = send(server, "sender@example.com", ["nobody@example.com"], "Invoice 7")

    assert code == replies.QUEUED.code
    assert text.startswith(b"2.0.0 OK: queued as ")
    [kept] = server.messages()
    assert kept.subject == "Invoice 7"
    [bounce] = relay.wait_for(1)
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["sender@example.com"])
    dsn = parsed(bounce.raw)
    assert dsn["From"] == "MAILER-DAEMON@fakesmtp"
    assert dsn["To"] == "sender@example.com"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Date"] is not None
    assert dsn["Message-ID"] is not None
    human, [per_message, per_recipient], original = report_parts(dsn)
    assert "nobody@example.com" in human.get_content()
    assert per_message["Reporting-MTA"] == "dns; fakesmtp"
    assert per_message["Arrival-Date"] is not None
    assert per_recipient["Final-Recipient"] == "rfc822; nobody@example.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert original["Message-ID"] == kept.message_id
    assert original["Subject"] == "Invoice 7"
    wait_until(lambda: server.stats()["bounces_sent"] == 1, what="the bounce counted")
    stats = server.stats()
    assert (stats["faults_fired"], stats["bounces_failed"]) == (1, 0)


def test_without_a_code_or_message_a_bounce_is_550_with_the_catalogue_text(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule.parse("message:bounce"))
    assert send(server, "s@example.com", ["r@example.com"])[0] == 250
    _, [_, block], _ = report_parts(parsed(relay.wait_for(1)[0].raw))
    assert block["Diagnostic-Code"] == f"smtp; 550 {replies.DEFAULT_FAULT_TEXT[550]}"
    assert block["Status"] == "5.1.1"


def test_match_selects_the_recipients_that_bounce(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    rule = FaultRule("message", "bounce", match=r"^nobody@")
    server = bouncing(fakesmtp_factory, relay, rule)
    assert send(server, "s@example.com", ["friend@example.com", "nobody@example.com"])[0] == 250
    _, [_, *per_recipient], _ = report_parts(parsed(relay.wait_for(1)[0].raw))
    assert [block["Final-Recipient"] for block in per_recipient] == ["rfc822; nobody@example.com"]


def test_match_on_the_sender_alone_does_not_bounce(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    """A bounce's match chooses recipients, so a sender that matches is not enough."""
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce", match=r"^s@"))
    assert send(server, "s@example.com", ["r@example.com"])[0] == 250
    assert server.faults()[0]["fired"] == 0
    assert server.stats()["faults_fired"] == 0


def test_every_recipient_bounces_without_match(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce"))
    assert send(server, "s@example.com", ["a@example.com", "b@example.com"])[0] == 250
    _, [_, *per_recipient], _ = report_parts(parsed(relay.wait_for(1)[0].raw))
    assert [block["Final-Recipient"] for block in per_recipient] == [
        "rfc822; a@example.com",
        "rfc822; b@example.com",
    ]


def test_a_4xx_bounce_reports_a_delay(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    rule = FaultRule.parse("message:bounce:452:4.2.2 Mailbox full")
    server = bouncing(fakesmtp_factory, relay, rule)
    assert send(server, "s@example.com", ["full@example.com"])[0] == 250
    dsn = parsed(relay.wait_for(1)[0].raw)
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    _, [_, block], _ = report_parts(dsn)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.2.2"
    assert block["Diagnostic-Code"] == "smtp; 452 4.2.2 Mailbox full"


def test_times_limits_the_bounces_and_each_counts_as_a_fired_fault(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce", times=1))
    assert send(server, "first@example.com", ["r@example.com"])[0] == 250
    assert send(server, "second@example.com", ["r@example.com"])[0] == 250
    wait_until(lambda: server.stats()["bounces_sent"] == 1, what="the bounce counted")
    # The rule expired at the first message, so the second can have scheduled nothing.
    assert server.faults() == []
    assert server.stats()["faults_fired"] == 1
    assert [m.rcpt_tos for m in relay.messages()] == [["first@example.com"]]
    assert len(server.messages()) == 2


def test_no_dsn_for_a_message_from_the_null_sender(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce"))
    assert send(server, "", ["r@example.com"], "from the null sender")[0] == 250
    # The second message's DSN arriving shows the first was done with, and sent none.
    assert send(server, "s@example.com", ["r@example.com"], "from someone")[0] == 250
    wait_until(lambda: server.stats()["bounces_sent"] == 1, what="the bounce counted")
    assert [m.rcpt_tos for m in relay.messages()] == [["s@example.com"]]
    stats = server.stats()
    assert (stats["faults_fired"], stats["bounces_failed"]) == (2, 0)
    assert len(server.messages()) == 2


def test_without_a_relay_a_bounce_is_counted_as_failed_and_the_session_carries_on(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = bouncing(fakesmtp_factory, None, FaultRule("message", "bounce"))
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for subject in ("one", "two"):
            assert client.sendmail("s@example.com", ["r@example.com"], make_message(subject)) == {}
        assert client.noop()[0] == 250
    wait_until(lambda: server.stats()["bounces_failed"] == 2, what="both bounces counted")
    assert server.stats()["bounces_sent"] == 0
    assert sorted(m.subject or "" for m in server.messages()) == ["one", "two"]


def test_an_unreachable_relay_counts_a_failed_bounce(fakesmtp_factory: FakeSMTPFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now, so the DSN's connection is refused.
    rule = FaultRule("message", "bounce")
    server: FakeSMTPServer = fakesmtp_factory(faults=[rule], bounce_relay=("127.0.0.1", port))
    assert send(server, "s@example.com", ["r@example.com"])[0] == 250
    wait_until(lambda: server.stats()["bounces_failed"] == 1, what="the failed bounce counted")
    assert server.stats()["bounces_sent"] == 0
    # The session's server is untouched: the next message goes through as before.
    assert send(server, "s@example.com", ["r@example.com"])[0] == 250


def test_a_relay_that_refuses_the_dsn_counts_a_failed_bounce(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule("rcpt", code=550, message="5.7.1 No bounces here"))
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce"))
    assert send(server, "s@example.com", ["r@example.com"])[0] == 250
    wait_until(lambda: server.stats()["bounces_failed"] == 1, what="the refused bounce counted")
    assert relay.messages() == []
    assert server.stats()["bounces_sent"] == 0


def test_a_message_ended_by_bdat_bounces_too(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce"))
    raw = make_message("in one chunk")
    with RawClient(server) as client:
        client.open_transaction()
        client.send(b"BDAT %d LAST\r\n" % len(raw) + raw)
        assert client.reply()[0] == 250
    [bounce] = relay.wait_for(1)
    assert bounce.rcpt_tos == ["s@example.com"]
    _, _, original = report_parts(parsed(bounce.raw))
    assert original["Subject"] == "in one chunk"


def test_a_non_ascii_sender_gets_its_dsn_over_smtputf8(
    fakesmtp_factory: FakeSMTPFactory, relay: FakeSMTPServer
) -> None:
    server = bouncing(fakesmtp_factory, relay, FaultRule("message", "bounce"))
    assert send(server, "jörg@example.com", ["r@example.com"], mail_options=["SMTPUTF8"])[0] == 250
    [bounce] = relay.wait_for(1)
    assert bounce.rcpt_tos == ["jörg@example.com"]
    assert parsed(bounce.raw)["To"] == "jörg@example.com"


def test_the_http_api_takes_a_bounce_rule(fakesmtp_factory: FakeSMTPFactory) -> None:
    server: FakeSMTPServer = fakesmtp_factory(http_port=0)
    assert server.http_url is not None
    with httpx.Client(base_url=server.http_url, timeout=5) as http:
        created = http.post(
            "/api/faults", json={"stage": "message", "action": "bounce", "match": "^nobody@"}
        )
        assert created.status_code == 201
        assert (created.json()["action"], created.json()["code"]) == ("bounce", 550)
        refused = http.post("/api/faults", json={"stage": "rcpt", "action": "bounce"})
        assert refused.status_code == 422
        assert "stage message" in refused.json()["detail"]
        stats = http.get("/api/stats").json()
        assert (stats["bounces_sent"], stats["bounces_failed"]) == (0, 0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("message:bounce", FaultRule("message", "bounce", 550)),
        (
            "message:bounce:550:5.1.1 No such user: really;match=^nobody@;times=2;p=0.5",
            FaultRule(
                "message",
                "bounce",
                550,
                "5.1.1 No such user: really",
                match="^nobody@",
                times=2,
                probability=0.5,
            ),
        ),
        ("MESSAGE:BOUNCE:451", FaultRule("message", "bounce", 451)),
        (
            "message:bounce::5.2.2 Mailbox full",
            FaultRule("message", "bounce", 550, "5.2.2 Mailbox full"),
        ),
    ],
)
def test_bounce_spec_syntax_parses(spec: str, expected: FaultRule) -> None:
    assert FaultRule.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("rcpt:bounce", "stage message"),
        ("data:bounce:550", "stage message"),
        ("message:bounce:abc", "numeric code"),
        ("message:bounce:250", "4xx or 5xx"),
        ("message:bounce:600", "4xx or 5xx"),
        ("message:bounce:550;colour=red", "unknown option"),
    ],
)
def test_bad_bounce_specs_are_refused(spec: str, error: str) -> None:
    with pytest.raises(FaultSpecError, match=error):
        FaultRule.parse(spec)


def test_bounce_rules_check_their_stage_and_code() -> None:
    with pytest.raises(FaultSpecError, match="stage message"):
        FaultRule("rcpt", "bounce")
    with pytest.raises(FaultSpecError, match="4xx or 5xx"):
        FaultRule("message", "bounce", True)
    rule = FaultRule("message", "bounce", 451, "4.2.2 Mailbox full", match="^full@")
    assert FaultRule.from_dict(rule.to_dict()) == rule


def test_bounced_picks_recipients_by_match() -> None:
    recipients = ["a@example.com", "nobody@example.com", "nobody@else.example"]
    assert FaultRule("message", "bounce").bounced(recipients) == recipients
    rule = FaultRule("message", "bounce", match=r"^nobody@")
    assert rule.bounced(recipients) == ["nobody@example.com", "nobody@else.example"]


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        (550, "5.1.1 No such user", "5.1.1"),
        (552, "5.2.2 Mailbox full", "5.2.2"),
        (450, "4.2.0 Mailbox busy", "4.2.0"),
        (550, "No such user", "5.0.0"),
        (451, "Try later", "4.0.0"),
        (451, "5.1.1 the wrong class for a 4xx", "4.0.0"),
        (550, "5.1.10 Null MX", "5.1.10"),
        (550, "5.1.1.1 not a status", "5.0.0"),
    ],
)
def test_status_comes_from_the_text_when_its_class_agrees(
    code: int, text: str, status: str
) -> None:
    assert status_for(code, text) == status


@given(st.integers(400, 599), st.text(max_size=30))
def test_the_status_class_always_follows_the_code(code: int, text: str) -> None:
    """Every 4xx reports a temporary status (4.x.x), every 5xx a permanent one (5.x.x)."""
    assert status_for(code, text).startswith(f"{code // 100}.")


def test_a_dsn_keeps_only_the_original_headers() -> None:
    original = make_message("Secret plans", body="the body stays out of the bounce\n")
    dsn = build_dsn(
        reporting_mta="fakesmtp",
        sender="s@example.com",
        recipients=["r@example.com"],
        code=550,
        text="5.1.1 No such user",
        original=original,
        arrival=datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
    )
    data = dsn.as_bytes(policy=policy.SMTP)
    assert b"the body stays out" not in data
    _, [per_message, _], headers = report_parts(parsed(data))
    assert per_message["Arrival-Date"] == "Tue, 01 Dec 2026 10:00:00 +0000"
    assert headers["Subject"] == "Secret plans"


@pytest.mark.parametrize(
    "relay",
    [("", 25), ("relay.example", 0), ("relay.example", 65536), ("relay.example", "25")],
)
def test_a_bad_bounce_relay_is_refused(relay: Any) -> None:
    with pytest.raises(ValueError, match="bounce_relay"):
        ServerOptions(bounce_relay=relay)


@pytest.mark.parametrize("value", ["relay.example", "relay.example:smtp", ":25", "h:0", "h:65536"])
def test_the_cli_refuses_a_bad_bounce_relay_in_one_line(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bounce-relay", value])
    assert info.value.code == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "--bounce-relay" in line
    assert "HOST:PORT" in line


@pytest.mark.parametrize(
    ("value", "relay"),
    [("127.0.0.1:2525", ("127.0.0.1", 2525)), ("[::1]:25", ("::1", 25))],
)
def test_the_cli_bounce_relay_becomes_the_server_option(value: str, relay: tuple[str, int]) -> None:
    assert build_parser().parse_args(["--bounce-relay", value]).bounce_relay == relay
