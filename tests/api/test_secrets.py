"""No secret leaks: API keys, the SMTP password and message bodies never appear in the
logs of a full run, in error answers, in the status endpoint or in the OpenAPI schema."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from service.app import create_app
from service.config import Settings
from tests.api.helpers import KEY, OTHER_KEY, MakeSettings, wait_status

pytestmark = pytest.mark.unit

SMTP_PASSWORD = "smtp-pass-Qx81"
BODY = "body-text-that-must-stay-private-5521"
HTML_BODY = "html-text-that-must-stay-private-9934"
WRONG_KEY = "wrong-key-that-is-also-secret-4410"


@pytest.fixture
def auth_relay() -> Iterator[FakeSMTPServer]:
    with FakeSMTPServer(port=0, auth=("relay-user", SMTP_PASSWORD)) as server:
        yield server


@pytest.fixture
def secret_settings(make_settings: MakeSettings, auth_relay: FakeSMTPServer) -> Settings:
    return make_settings(
        smtp_port=auth_relay.port,
        smtp_username="relay-user",
        smtp_password=SMTP_PASSWORD,
        log_level="DEBUG",
    )


def full_run(client: TestClient, relay: FakeSMTPServer) -> list[str]:
    """Exercise every endpoint and most error answers; return every answer's text."""
    auth = {"X-API-Key": KEY}
    message = {"to": "ana@example.com", "subject": "s", "body": BODY, "html": f"<p>{HTML_BODY}</p>"}
    answers = []
    sent = client.post("/send", json=message, headers=auth)
    assert sent.status_code == 200, sent.text
    answers.append(sent.text)
    other = {"X-API-Key": OTHER_KEY}
    queued = client.post("/send_async", json=message, headers=other)
    assert queued.status_code == 202
    answers.append(queued.text)
    answers.append(json.dumps(wait_status(client, queued.json()["id"], "sent", other)))
    answers.append(client.get("/messages", headers=other).text)
    batch = client.post("/send_batch", json={"messages": [message]}, headers=auth)
    assert batch.status_code == 202
    answers.append(batch.text)
    # Delivered before the refusal below: a 5xx at RCPT puts the address on the
    # suppression list, and the batch's delivery must not be the one that meets it.
    wait_status(client, batch.json()["results"][0]["id"], "sent", auth)
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 Unknown"))
    failed = client.post("/send", json=message, headers=auth)
    assert failed.status_code == 500
    answers.append(failed.text)
    answers.append(client.get(f"/messages/{failed.json()['id']}", headers=auth).text)
    answers.append(client.post("/send", json=message, headers={"X-API-Key": WRONG_KEY}).text)
    answers.append(client.post("/send", json={**message, "to": "bad"}, headers=auth).text)
    answers.append(client.post("/send", json={**message, "subject": "a\nb"}, headers=auth).text)
    answers.append(client.get("/metrics").text)
    answers.append(client.get("/openapi.json").text)
    return answers


def test_full_run_leaks_no_key_password_or_body(
    secret_settings: Settings, auth_relay: FakeSMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(secret_settings)) as client:
        answers = full_run(client, auth_relay)
    assert auth_relay.messages()[0].auth_user == "relay-user"
    # The service's logs: everything but the fake relay's own (aiosmtpd logs DATA lines).
    records = [
        record for record in caplog.records if not record.name.startswith(("mail.log", "fakesmtp"))
    ]
    logs = "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''} {vars(record)!r}"
        for record in records
    )
    assert any(record.name.startswith("service") for record in records)
    for secret in (KEY, OTHER_KEY, WRONG_KEY, SMTP_PASSWORD, BODY, HTML_BODY):
        assert secret not in logs, f"{secret!r} appears in the logs"
        for answer in answers:
            assert secret not in answer, f"{secret!r} appears in an answer"


def test_settings_repr_hides_the_keys_and_password(secret_settings: Settings) -> None:
    text = repr(secret_settings) + str(secret_settings)
    for secret in (KEY, OTHER_KEY, SMTP_PASSWORD):
        assert secret not in text
