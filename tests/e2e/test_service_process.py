"""`python -m service` as a real process against fakesmtp over STARTTLS with AUTH."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.certs import make_self_signed
from tests.e2e.helpers import ServiceProcess

pytestmark = pytest.mark.e2e


def wait_status(
    client: httpx.Client, message_id: str, wanted: str, timeout: float = 20.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        record = client.get(f"/messages/{message_id}").json()
        if record["status"] == wanted:
            return record
        time.sleep(0.05)
    raise AssertionError(f"message {message_id} never reached {wanted}: {record}")


def test_send_and_send_async_over_starttls_with_auth(
    tmp_path: Path, service_factory: type[ServiceProcess]
) -> None:
    """Both endpoints deliver through a relay requiring STARTTLS and AUTH, certificate verified."""
    cert, key = make_self_signed(tmp_path)
    with FakeSMTPServer(
        tls_cert=cert, tls_key=key, require_tls=True, auth=("relay", "s3cret")
    ) as smtp:
        service = service_factory(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'mail.db'}",
                "SMTP_HOST": "localhost",
                "SMTP_PORT": str(smtp.port),
                "SMTP_SECURITY": "starttls",
                "SMTP_CA_FILE": str(cert),
                "SMTP_USERNAME": "relay",
                "SMTP_PASSWORD": "s3cret",
                "MAIL_FROM": "app@example.com",
            }
        )
        service.start()
        with service.client() as client:
            sync = client.post(
                "/send", json={"to": "ana@example.com", "subject": "sync", "body": "one"}
            )
            assert sync.status_code == 200, sync.text
            assert sync.json()["status"] == "sent"

            queued = client.post(
                "/send_async", json={"to": ["bo@example.com"], "subject": "async", "body": "two"}
            )
            assert queued.status_code == 202, queued.text
            record = wait_status(client, queued.json()["id"], "sent")
            assert record["attempts"] == 1
            assert record["message_id"] == queued.json()["message_id"]

        captured = {m.subject: m for m in smtp.wait_for(2)}
        assert set(captured) == {"sync", "async"}
        for message in captured.values():
            assert message.tls is True
            assert message.auth_user == "relay"
            assert message.mail_from == "app@example.com"
        assert captured["async"].message_id == queued.json()["message_id"]


def test_untrusted_certificate_is_a_permanent_failure(
    tmp_path: Path, service_factory: type[ServiceProcess]
) -> None:
    """Without SMTP_CA_FILE the self-signed relay is refused: 500, nothing sent in clear."""
    cert, key = make_self_signed(tmp_path)
    with FakeSMTPServer(tls_cert=cert, tls_key=key) as smtp:
        service = service_factory(
            {
                "DATABASE_URL": f"sqlite:///{tmp_path / 'mail.db'}",
                "SMTP_HOST": "localhost",
                "SMTP_PORT": str(smtp.port),
                "SMTP_SECURITY": "starttls",
            }
        )
        service.start()
        with service.client() as client:
            answer = client.post("/send", json={"to": "ana@example.com", "body": "x"})
        assert answer.status_code == 500
        body = answer.json()
        assert body["ok"] is False
        assert body["status"] == "failed"
        assert body["error"]
        assert smtp.messages() == []


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "API_KEY"),
        ({"API_KEY": "k", "SMTP_SECURITY": "tls"}, "SMTP_SECURITY"),
        ({"API_KEY": "k", "MAX_MESSAGE_BYTES": "-5"}, "MAX_MESSAGE_BYTES"),
        ({"API_KEY": "k", "DATABASE_URL": "not a url"}, "DATABASE_URL"),
    ],
)
def test_bad_configuration_stops_startup_with_one_line(env: dict[str, str], variable: str) -> None:
    """A bad or missing variable exits non-zero with one stderr line naming it."""
    clean = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "COVERAGE_PROCESS_START"}}
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**clean, **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert variable in lines[0]
    assert "Traceback" not in result.stderr.decode()
