"""After the 202, with real processes: `python -m fakesmtp` bounces on purpose through
the bounce listener of a real `python -m service`, whose events reach a real HTTP
receiver signed; and a receiver down for a whole run, with a SIGKILL in between,
gets every event once it is back."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from tests.e2e.helpers import ServiceProcess, free_port, python_m, still_missing, wait_for_health
from tests.helpers import wait_until
from tests.webhooks.helpers import SECRET, WebhookReceiver

pytestmark = pytest.mark.e2e

RETRY_MAX = 2.0


CONNECTIONS = 4


def hooks_env(database: str, smtp_port: int, receiver: WebhookReceiver) -> dict[str, str]:
    return {
        "WORKER_CONCURRENCY": str(CONNECTIONS),
        "DATABASE_URL": database,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_RETRY_MAX": str(RETRY_MAX),
        "WEBHOOK_TIMEOUT": "2",
    }


def test_a_bounce_from_fakesmtp_becomes_bounced_signed_events_and_a_suppression(
    service_factory: type[ServiceProcess], tmp_path: Path
) -> None:
    bounce_port, smtp_port, http_port = free_port(), free_port(), free_port()
    fake_log = (tmp_path / "fakesmtp.log").open("wb")
    fake = subprocess.Popen(
        python_m(
            "fakesmtp",
            "--port", str(smtp_port),
            "--http-port", str(http_port),
            "--bounce-relay", f"127.0.0.1:{bounce_port}",
            "--fault", "message:bounce:550:5.1.1 No such user;match=^nobody@",
        ),
        stdout=fake_log,
        stderr=fake_log,
    )  # fmt: skip
    try:
        wait_for_health(f"http://127.0.0.1:{http_port}/api", fake)
        with WebhookReceiver() as receiver:
            env = hooks_env(f"sqlite:///{tmp_path / 'outbox.db'}", smtp_port, receiver)
            env.update(BOUNCE_ADDRESS="bounces@mail.example.com", BOUNCE_SMTP_PORT=str(bounce_port))
            service = service_factory(env)
            service.start()
            with service.client() as client:
                made = client.post(
                    "/send_async",
                    json={"to": "nobody@example.com", "subject": "s", "body": "b"},
                )
                assert made.status_code == 202, made.text
                record_id = made.json()["id"]

                def status() -> str:
                    return str(client.get(f"/messages/{record_id}").json()["status"])

                wait_until(lambda: status() == "bounced", timeout=20, what="bounced")
                wait_until(lambda: len(receiver.accepted()) == 2, timeout=20, what="events")
                payloads = [d.verified() for d in receiver.accepted()]
                # message.sent is written when the relay says 250, before the DSN exists.
                payloads.sort(key=lambda p: p["timestamp"])
                assert [p["type"] for p in payloads] == ["message.sent", "message.bounced"]
                assert payloads[1]["data"]["recipient"] == "nobody@example.com"
                assert "5.1.1" in payloads[1]["data"]["detail"]
                listed = client.get("/suppressions").json()["suppressions"]
                assert [s["address"] for s in listed] == ["nobody@example.com"]
                again = client.post(
                    "/send_async", json={"to": "nobody@example.com", "subject": "s", "body": "b"}
                )
                assert again.status_code == 422
                assert "nobody@example.com" in again.text
            stats = httpx.get(f"http://127.0.0.1:{http_port}/api/stats").json()
            assert stats["bounces_sent"] == 1
    finally:
        fake.terminate()
        fake.wait(10)
        fake_log.close()


def wait_delivered(smtp: FakeSMTPServer, recipients: set[str]) -> None:
    """Until every one of ``recipients`` has a message at the relay (some may have two)."""
    missing = still_missing(smtp, recipients, lambda m: m.rcpt_tos, timeout=30)
    assert not missing, f"never delivered: {sorted(missing)}"


def test_a_receiver_down_for_the_whole_run_gets_every_event_once_back_across_a_sigkill(
    database: str, service_factory: type[ServiceProcess]
) -> None:
    receiver = WebhookReceiver()  # not up: its port refuses connections
    with FakeSMTPServer() as smtp:
        env = hooks_env(database, smtp.port, receiver)
        first = service_factory(env)
        first.start()
        with first.client() as client:
            ids = [
                client.post(
                    "/send_async", json={"to": f"r{n}@example.com", "subject": "s", "body": "b"}
                ).json()["id"]
                for n in range(50)
            ]
        wait_delivered(smtp, {f"r{n}@example.com" for n in range(50)})
        first.kill()
        second = service_factory(env, port=first.port)
        second.start()
        with second.client() as client:
            ids += [
                client.post(
                    "/send_async", json={"to": f"s{n}@example.com", "subject": "s", "body": "b"}
                ).json()["id"]
                for n in range(50)
            ]
            wait_delivered(smtp, {f"{p}{n}@example.com" for p in "rs" for n in range(50)})
            # A message the relay took just before the SIGKILL, its acceptance not yet
            # written, is sent again after the restart: at most one per connection.
            assert len(smtp.messages()) - 100 <= CONNECTIONS
            receiver.up()
            back = time.monotonic()
            # Within WEBHOOK_RETRY_MAX of its coming back (plus the time to send 100).
            wait_until(
                lambda: len({d.id for d in receiver.accepted()}) == 100,
                timeout=RETRY_MAX + 15,
                what="every event",
            )
            took = time.monotonic() - back
        receiver.down()
    accepted = receiver.accepted()
    assert {d.verified()["data"]["id"] for d in accepted} == set(ids)
    # Duplicates only as retries of one id: each id was answered 2xx once.
    assert len(accepted) == len({d.id for d in accepted}) == 100
    # Within about WEBHOOK_RETRY_MAX: the next probe comes at most RETRY_MAX after
    # the last failure, then the backlog goes at once (2.8 s here, 0.5 s on
    # PostgreSQL; the slack is for a loaded CI machine).
    assert took < RETRY_MAX + 5
