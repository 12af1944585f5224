"""Bounces in one process: VERP envelope senders, the service's bounce listener (real
SMTP on 127.0.0.1), the record marked bounced, the address suppressed; a relay that
bounces on purpose is fakesmtp's `bounce` action."""

from __future__ import annotations

import email.policy
import smtplib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from fakesmtp.dsn import build_dsn
from service.bounces.listener import MAX_SESSIONS
from service.config import Settings
from tests.api.helpers import AUTH, MakeClient, MakeSettings, wait_status
from tests.helpers import wait_until
from tests.webhooks.helpers import SECRET, WebhookReceiver, free_port

pytestmark = pytest.mark.unit

BOUNCES = "bounces@mail.example.com"


@pytest.fixture
def bounce_port() -> int:
    return free_port()


@pytest.fixture
def bouncing_relay(bounce_port: int) -> Iterator[FakeSMTPServer]:
    """A relay that bounces mail for nobody@ back through the service's listener."""
    with FakeSMTPServer(port=0, bounce_relay=("127.0.0.1", bounce_port)) as server:
        server.add_fault(FaultRule(stage="message", action="bounce", code=550, match="^nobody@"))
        yield server


@pytest.fixture
def bounce_settings(
    make_settings: MakeSettings, bouncing_relay: FakeSMTPServer, bounce_port: int
) -> Settings:
    return make_settings(
        smtp_port=bouncing_relay.port, bounce_address=BOUNCES, bounce_smtp_port=bounce_port
    )


def send(client: TestClient, to: str | list[str]) -> str:
    response = client.post(
        "/send_async", json={"to": to, "subject": "s", "body": "b"}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def dsn_for(
    record_id: str, recipient: str, code: int = 550, text: str = "5.1.1 No such user"
) -> bytes:
    original = EmailMessage()
    original["Message-ID"] = f"<{record_id}@example.com>"
    original["Subject"] = "s"
    return build_dsn(
        reporting_mta="mx.example.net",
        sender=f"bounces+{record_id}@mail.example.com",
        recipients=[recipient],
        code=code,
        text=text,
        original=original.as_bytes(),
        arrival=datetime.now(UTC),
    ).as_bytes(policy=email.policy.SMTP)


def test_the_envelope_sender_is_verp_and_the_from_header_is_unchanged(
    make_client: MakeClient, bounce_settings: Settings, bouncing_relay: FakeSMTPServer
) -> None:
    client = make_client(bounce_settings)
    record_id = send(client, "ana@example.com")
    (captured,) = bouncing_relay.wait_for_count(1)
    assert captured.mail_from == f"bounces+{record_id}@mail.example.com"
    assert b"From: app@example.com" in captured.raw


def test_a_bounce_from_the_relay_marks_the_record_and_suppresses_the_address(
    make_client: MakeClient, bounce_settings: Settings
) -> None:
    client = make_client(bounce_settings)
    record_id = send(client, ["nobody@example.com", "ana@example.com"])
    record = wait_status(client, record_id, "bounced")
    bounced = [e for e in record["events"] if e["type"] == "message.bounced"]
    assert [(e["recipient"], e["code"]) for e in bounced] == [("nobody@example.com", 550)]
    assert "5.1.1" in bounced[0]["detail"]
    assert "nobody@example.com" in record["last_error"]
    listed = client.get("/suppressions", headers=AUTH).json()["suppressions"]
    assert [(s["address"], s["message_id"]) for s in listed] == [("nobody@example.com", record_id)]
    again = client.post(
        "/send_async", json={"to": "nobody@example.com", "subject": "s", "body": "b"}, headers=AUTH
    )
    assert again.status_code == 422


def test_non_bounce_addresses_are_refused_with_550(
    make_client: MakeClient, bounce_settings: Settings, bounce_port: int
) -> None:
    make_client(bounce_settings)
    with smtplib.SMTP("127.0.0.1", bounce_port, timeout=5) as smtp:
        smtp.ehlo()
        smtp.mail("")
        code, _ = smtp.rcpt("postmaster@mail.example.com")
        assert code == 550
        code, _ = smtp.rcpt(f"bounces+{'z' * 32}@mail.example.com")
        assert code == 550


def test_malformed_unknown_and_delay_reports_are_accepted_and_counted(
    make_client: MakeClient, bounce_settings: Settings, bounce_port: int
) -> None:
    client = make_client(bounce_settings)
    record_id = send(client, "ana@example.com")
    wait_status(client, record_id, "sent")
    verp = f"bounces+{record_id}@mail.example.com"
    with smtplib.SMTP("127.0.0.1", bounce_port, timeout=5) as smtp:
        assert smtp.sendmail("", [verp], b"Subject: garbage\r\n\r\n\x00\xff not a report") == {}
        assert (
            smtp.sendmail("", [verp], dsn_for(record_id, "ana@example.com", 451, "4.2.2 full"))
            == {}
        )
        unknown = "f" * 32
        assert (
            smtp.sendmail("", [f"bounces+{unknown}@mail.example.com"], dsn_for(unknown, "x@y.org"))
            == {}
        )

    def counted() -> dict[str, float]:
        found = {}
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("mail_bounces_total{"):
                result = line.split('result="')[1].split('"')[0]
                found[result] = float(line.rsplit(" ", 1)[1])
        return found

    wait_until(lambda: counted() == {"unrecognised": 1.0, "delayed": 1.0, "unknown": 1.0})
    record = client.get(f"/messages/{record_id}", headers=AUTH).json()
    assert record["status"] == "sent"  # none of them was a bounce of this message


def test_a_bounce_reaches_the_webhook_receiver_after_the_sent_event(
    make_client: MakeClient,
    make_settings: MakeSettings,
    bouncing_relay: FakeSMTPServer,
    bounce_port: int,
) -> None:
    with WebhookReceiver() as receiver:
        settings = make_settings(
            smtp_port=bouncing_relay.port,
            bounce_address=BOUNCES,
            bounce_smtp_port=bounce_port,
            webhook_url=receiver.url,
            webhook_secret=SECRET,
        )
        client = make_client(settings)
        record_id = send(client, "nobody@example.com")
        wait_until(lambda: len(receiver.accepted()) == 2, what="sent and bounced")
        payloads = [d.verified() for d in receiver.accepted()]
        assert sorted(p["type"] for p in payloads) == ["message.bounced", "message.sent"]
        bounced = next(p for p in payloads if p["type"] == "message.bounced")
        assert (bounced["data"]["id"], bounced["data"]["recipient"], bounced["data"]["status"]) == (
            record_id,
            "nobody@example.com",
            "bounced",
        )


def test_bounce_port_without_bounce_address_is_a_configuration_error(
    make_settings: MakeSettings,
) -> None:
    with pytest.raises(ValueError, match="BOUNCE_ADDRESS"):
        make_settings(bounce_smtp_port=2525)
    with pytest.raises(ValueError, match="plain address"):
        make_settings(bounce_address="bounces+x@example.com")


def test_sessions_over_the_cap_are_told_to_come_back_later(
    make_client: MakeClient, bounce_settings: Settings, bounce_port: int
) -> None:
    make_client(bounce_settings)
    held = []
    try:
        for _ in range(MAX_SESSIONS):
            sock = socket.create_connection(("127.0.0.1", bounce_port), timeout=5)
            held.append(sock)
            assert sock.recv(1024).startswith(b"220 ")
        with socket.create_connection(("127.0.0.1", bounce_port), timeout=5) as extra:
            assert extra.recv(1024).startswith(b"421 ")
        held.pop().close()

        def a_place_is_free() -> bool:
            with socket.create_connection(("127.0.0.1", bounce_port), timeout=5) as again:
                return again.recv(1024).startswith(b"220 ")

        wait_until(a_place_is_free, what="a session to end")
    finally:
        for sock in held:
            sock.close()
