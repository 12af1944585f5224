"""A scheduled message lives in the database only: a SIGKILLed `python -m service`
restarted on the same database sends it at its time, once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fakesmtp import FakeSMTPServer
from tests.e2e.helpers import ServiceProcess

pytestmark = pytest.mark.e2e

# Long enough for a kill and a restart under coverage (about 5 s here) to come first.
AHEAD = timedelta(seconds=15)


def test_a_scheduled_message_survives_sigkill_and_is_sent_on_time_once(
    database: str, service_factory: type[ServiceProcess]
) -> None:
    with FakeSMTPServer() as smtp:
        env = {"DATABASE_URL": database, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port)}
        first = service_factory(env)
        first.start()
        due = datetime.now(UTC) + AHEAD
        with first.client() as client:
            made = client.post(
                "/send_async",
                json={"to": "ana@example.com", "subject": "later", "body": "x",
                      "send_at": due.isoformat()},
            )  # fmt: skip
            assert made.status_code == 202, made.text
            assert made.json()["status"] == "scheduled"
        first.kill()
        second = service_factory(env, port=first.port)
        second.start()
        with second.client() as client:
            record = client.get(f"/messages/{made.json()['id']}").json()
            assert record["status"] == "scheduled"
            assert smtp.messages() == []
            deadline = time.monotonic() + AHEAD.total_seconds() + 10
            while record["status"] != "sent" and time.monotonic() < deadline:
                time.sleep(0.05)
                record = client.get(f"/messages/{made.json()['id']}").json()
        assert record["status"] == "sent", record
        sent_at = datetime.fromisoformat(record["sent_at"])
        assert due - timedelta(milliseconds=1) <= sent_at < due + timedelta(seconds=1)
        assert len(smtp.messages()) == 1
