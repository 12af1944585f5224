"""Every endpoint and error answer of the contract: status codes and JSON shapes.

The app runs with its lifespan (TestClient as a context manager), a real SQLite file in
tmp_path and a real fakesmtp relay on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from service.config import Settings
from tests.api.helpers import (
    AUTH,
    KEY,
    OTHER_KEY,
    SEND_RESPONSE_KEYS,
    STATUS_KEYS,
    MakeClient,
    MakeSettings,
    stored_rows,
    wait_status,
)
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Hello", "body": "the body text"}


def assert_iso_utc(value: str) -> None:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def assert_error_shape(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str)
    assert body["detail"]


def accepted_body(response: Any, code: int, status: str) -> dict[str, Any]:
    """The answer of a send that went well: `code`, every field, ok, `status`, no error."""
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == SEND_RESPONSE_KEYS
    assert body["ok"] is True
    assert body["status"] == status
    assert body["error"] is None
    return body


# -- /health ----------------------------------------------------------------------


def test_health_answers_ok_without_a_key(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- /send ------------------------------------------------------------------------


def test_send_answers_200_sent_and_the_relay_has_the_message(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    body = accepted_body(client.post("/send", json=MESSAGE, headers=AUTH), 200, "sent")
    assert body["rejected"] == []
    assert re.fullmatch(r"<[^<>@]+@[^<>]+>", body["message_id"])
    [captured] = relay.wait_for(1)
    assert captured.message_id == body["message_id"]
    assert captured.rcpt_tos == ["ana@example.com"]
    assert captured.mail_from == "app@example.com"


def test_send_record_is_sent_with_one_attempt_and_iso_times(client: TestClient) -> None:
    sent = client.post("/send", json=MESSAGE, headers=AUTH).json()
    response = client.get(f"/messages/{sent['id']}", headers=AUTH)
    assert response.status_code == 200
    record = response.json()
    assert set(record) >= STATUS_KEYS
    assert record["status"] == "sent"
    assert record["attempts"] == 1
    assert record["last_error"] is None
    assert record["to"] == ["ana@example.com"]
    assert record["subject"] == "Hello"
    assert record["message_id"] == sent["message_id"]
    for name in ("created_at", "updated_at", "sent_at"):
        assert_iso_utc(record[name])


def test_send_answers_500_send_response_when_the_relay_refuses(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 No such user"))
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 500
    body = response.json()
    assert set(body) == SEND_RESPONSE_KEYS
    assert body["ok"] is False
    assert body["status"] == "failed"
    assert "No such user" in body["error"]
    record = client.get(f"/messages/{body['id']}", headers=AUTH).json()
    assert record["status"] == "failed"
    assert record["sent_at"] is None
    assert "No such user" in record["last_error"]
    assert relay.messages() == []


def test_send_retries_a_temporary_failure_inline_and_counts_attempts(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(
        FaultRule(stage="mail", action="reply", code=451, message="4.3.0 Busy", times=1)
    )
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 200, response.text
    record = client.get(f"/messages/{response.json()['id']}", headers=AUTH).json()
    assert record["attempts"] == 2
    assert len(relay.messages()) == 1


def test_send_uses_the_injected_sleep_for_backoff(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer
) -> None:
    waits: list[float] = []
    settings = make_settings(smtp_backoff_base=30.0, smtp_backoff_max=30.0, smtp_max_retries=2)
    client = make_client(settings, sleep=waits.append)
    relay.add_fault(FaultRule(stage="mail", action="reply", code=421, message="4.4.2 Bye", times=2))
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 200, response.text
    assert len(waits) == 2
    assert all(0 <= wait <= 30.0 for wait in waits)


def test_send_reports_recipients_refused_while_others_were_accepted(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(
        FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 Gone", match="bo@")
    )
    message = {**MESSAGE, "to": ["ana@example.com", "bo@example.com"]}
    response = client.post("/send", json=message, headers=AUTH)
    assert response.status_code == 200, response.text
    [rejected] = response.json()["rejected"]
    assert rejected["recipient"] == "bo@example.com"
    assert rejected["code"] == 550
    assert "Gone" in rejected["message"]


# -- /send_async ------------------------------------------------------------------


def test_send_async_answers_202_queued_then_delivers(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    body = accepted_body(client.post("/send_async", json=MESSAGE, headers=AUTH), 202, "queued")
    [captured] = relay.wait_for(1)
    assert captured.message_id == body["message_id"]
    record = wait_status(client, body["id"], "sent")
    assert record["attempts"] == 1
    assert_iso_utc(record["sent_at"])


@pytest.mark.parametrize("endpoint", ["/send", "/send_async"])
def test_ids_are_uuid7_and_the_message_id_carries_the_record_id(
    client: TestClient, endpoint: str
) -> None:
    """The Message-ID found in an inbox leads to the record: <id@sender's domain>."""
    answers = [client.post(endpoint, json=MESSAGE, headers=AUTH).json() for _ in range(3)]
    for body in answers:
        assert uuid.UUID(body["id"]).version == 7
        assert body["message_id"] == f"<{body['id']}@example.com>"
    assert len({body["id"] for body in answers}) == 3


def test_send_async_row_is_committed_before_the_answer(client: TestClient, db_path: Path) -> None:
    body = client.post("/send_async", json=MESSAGE, headers=AUTH).json()
    assert body["id"] in {row["id"] for row in stored_rows(db_path)}


def test_send_async_queue_full_is_503_with_retry_after_and_stores_nothing(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer, db_path: Path
) -> None:
    # The relay holds the first message, so the one-slot backlog stays full.
    relay.add_fault(FaultRule(stage="data", action="delay", delay=3.0, times=1))
    client = make_client(make_settings(queue_maxsize=1, worker_concurrency=1))
    first = client.post("/send_async", json=MESSAGE, headers=AUTH)
    assert first.status_code == 202
    second = client.post("/send_async", json={**MESSAGE, "subject": "second"}, headers=AUTH)
    assert_error_shape(second, 503)
    assert int(second.headers["Retry-After"]) >= 1
    assert [row["subject"] for row in stored_rows(db_path)] == ["Hello"]


def test_send_async_when_the_database_is_gone_is_503_and_nothing_is_stored(
    client: TestClient, db_path: Path
) -> None:
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    moved = db_path.with_suffix(".moved")
    db_path.rename(moved)
    try:
        response = client.post("/send_async", json={**MESSAGE, "subject": "lost?"}, headers=AUTH)
    finally:
        moved.rename(db_path)  # back beside its -wal file, so the rows can be read
    assert_error_shape(response, 503)
    assert "Retry-After" in response.headers
    assert [row["subject"] for row in stored_rows(db_path)] == ["Hello"]


def test_send_async_when_the_database_is_locked_is_503_and_nothing_is_stored(
    client: TestClient, db_path: Path
) -> None:
    import sqlite3

    first = client.post("/send_async", json=MESSAGE, headers=AUTH)
    assert first.status_code == 202
    wait_status(client, first.json()["id"], "sent")  # the worker is done writing
    blocker = sqlite3.connect(db_path, timeout=10)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        response = client.post("/send_async", json={**MESSAGE, "subject": "locked"}, headers=AUTH)
    finally:
        blocker.rollback()
        blocker.close()
    assert_error_shape(response, 503)
    assert "locked" not in [row["subject"] for row in stored_rows(db_path)]


def test_send_async_after_the_worker_stopped_is_503(client: TestClient, settings: Settings) -> None:
    client.app.state.services.worker.stop(0)  # type: ignore[attr-defined]
    response = client.post("/send_async", json=MESSAGE, headers=AUTH)
    assert_error_shape(response, 503)
    assert "Retry-After" in response.headers


# -- GET /messages/{id} ------------------------------------------------------------


def test_unknown_message_id_is_404(client: TestClient) -> None:
    assert_error_shape(client.get("/messages/does-not-exist", headers=AUTH), 404)


def test_message_record_never_contains_the_body(client: TestClient) -> None:
    secret = "zebra-body-7f3a"
    sent = client.post(
        "/send", json={**MESSAGE, "body": secret, "html": f"<p>{secret}</p>"}, headers=AUTH
    ).json()
    record = client.get(f"/messages/{sent['id']}", headers=AUTH)
    assert record.status_code == 200
    assert secret not in record.text


# -- auth ---------------------------------------------------------------------------


ENDPOINTS = [("POST", "/send"), ("POST", "/send_async"), ("GET", "/messages/abc")]
BAD_KEYS = [
    pytest.param({}, id="missing"),
    pytest.param({"X-API-Key": ""}, id="empty"),
    pytest.param({"X-API-Key": "wrong"}, id="wrong"),
    pytest.param({"X-API-Key": KEY.upper()}, id="other-case"),
    pytest.param({"X-API-Key": KEY[:-1]}, id="prefix"),
    pytest.param({"X-API-Key": KEY + "x"}, id="longer"),
    pytest.param({"X-API-Key": f"{KEY},{OTHER_KEY}"}, id="both-keys-as-one"),
    pytest.param({"Authorization": f"Bearer {KEY}"}, id="bearer-instead"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("headers", BAD_KEYS)
def test_missing_or_wrong_key_is_401_and_nothing_is_sent_or_stored(
    client: TestClient,
    relay: FakeSMTPServer,
    db_path: Path,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    response = client.request(method, path, json=MESSAGE, headers=headers)
    assert_error_shape(response, 401)
    assert stored_rows(db_path) == []
    assert relay.messages() == []


def test_non_ascii_key_is_401_not_an_error(client: TestClient) -> None:
    response = client.post("/send", json=MESSAGE, headers={"X-API-Key": "clé".encode()})  # type: ignore[dict-item]
    assert_error_shape(response, 401)


def test_malformed_json_without_a_key_is_401_not_422(client: TestClient) -> None:
    response = client.post(
        "/send_async", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 401)


def test_body_that_is_not_utf8_without_a_key_is_401(client: TestClient) -> None:
    response = client.post(
        "/send", content=b"{\xff\xfe}", headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 401)


def test_body_that_is_not_utf8_with_a_key_is_422_not_400(client: TestClient) -> None:
    response = client.post(
        "/send", content=b"{\xff\xfe}", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_invalid_body_without_a_key_is_401_not_422(client: TestClient) -> None:
    assert_error_shape(client.post("/send_async", json={"to": 3}), 401)


def test_second_key_is_accepted_for_rotation(client: TestClient) -> None:
    response = client.post("/send_async", json=MESSAGE, headers={"X-API-Key": OTHER_KEY})
    assert response.status_code == 202


# -- 422 ------------------------------------------------------------------------------


def assert_422(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    for item in detail:
        assert {"loc", "msg", "type"} <= set(item)
    return detail  # type: ignore[no-any-return]


def test_malformed_json_with_a_key_is_422(client: TestClient) -> None:
    response = client.post(
        "/send", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_422(response)


INVALID_BODIES = [
    pytest.param({"subject": "x", "body": "y"}, id="no-to"),
    pytest.param({"to": "ana@example.com"}, id="no-body-or-html"),
    pytest.param({**MESSAGE, "to": "a@x.com, b@y.com"}, id="comma-list-in-one-string"),
    pytest.param({**MESSAGE, "to": "a@x.com\nBcc: c@z.com"}, id="lf-bcc-smuggling"),
    pytest.param({**MESSAGE, "to": "a@x.com\r\nBcc: c@z.com"}, id="crlf-in-to"),
    pytest.param({**MESSAGE, "cc": ["a@x.com\x00"]}, id="nul-in-cc"),
    pytest.param({**MESSAGE, "bcc": ["not-an-address"]}, id="bad-bcc"),
    pytest.param({**MESSAGE, "subject": "Hi\r\nBcc: c@z.com"}, id="crlf-in-subject"),
    pytest.param({**MESSAGE, "subject": "Hi\nX-Evil: 1"}, id="lf-in-subject"),
    pytest.param({**MESSAGE, "subject": "Hi\x00"}, id="nul-in-subject"),
    pytest.param({**MESSAGE, "subject": "Hi\x1b[31m"}, id="escape-in-subject"),
    pytest.param({**MESSAGE, "headers": {"X-A": "1\r\nBcc: c@z.com"}}, id="crlf-in-header-value"),
    pytest.param({**MESSAGE, "headers": {"X-A\r\nBcc": "c@z.com"}}, id="crlf-in-header-name"),
    pytest.param({**MESSAGE, "headers": {"X A": "1"}}, id="space-in-header-name"),
    pytest.param({**MESSAGE, "headers": {"Bcc": "c@z.com"}}, id="reserved-bcc-header"),
    pytest.param({**MESSAGE, "headers": {"Content-Type": "text/html"}}, id="content-header"),
    pytest.param({**MESSAGE, "from": "a@x.com\r\nBcc: c@z.com"}, id="crlf-in-from"),
    pytest.param({**MESSAGE, "reply_to": "a@x.com, b@y.com"}, id="list-in-reply-to"),
    pytest.param({**MESSAGE, "to": "Doe, Jane <j@x.com>"}, id="unquoted-comma-name"),
    pytest.param({**MESSAGE, "unknown": 1}, id="unknown-field"),
    pytest.param({**MESSAGE, "to": []}, id="empty-to"),
    pytest.param({**MESSAGE, "body": 12}, id="body-not-text"),
    pytest.param([MESSAGE], id="array-not-object"),
]


@pytest.mark.parametrize("path", ["/send", "/send_async"])
@pytest.mark.parametrize("body", INVALID_BODIES)
def test_invalid_body_is_422_and_nothing_is_sent_or_stored(
    client: TestClient, relay: FakeSMTPServer, db_path: Path, path: str, body: Any
) -> None:
    assert_422(client.post(path, json=body, headers=AUTH))
    assert stored_rows(db_path) == []
    assert relay.messages() == []


def test_reserved_header_error_names_the_field_to_use(client: TestClient) -> None:
    detail = assert_422(
        client.post("/send", json={**MESSAGE, "headers": {"Reply-To": "x@y.z"}}, headers=AUTH)
    )
    assert "header 'Reply-To' is reserved: use the request field 'reply_to'" in json.dumps(detail)


def test_comma_list_error_says_to_send_a_list(client: TestClient) -> None:
    detail = assert_422(
        client.post("/send", json={**MESSAGE, "to": "a@x.com,b@y.com"}, headers=AUTH)
    )
    assert "JSON list" in json.dumps(detail)


@pytest.mark.parametrize(
    "address",
    [
        '"Lopez, Ana" <ana@example.com>',
        "Jörg <jörg@bücher.de>",
        "ana@bücher.de",
    ],
)
def test_quoted_names_and_international_addresses_are_accepted(
    client: TestClient, relay: FakeSMTPServer, address: str
) -> None:
    response = client.post("/send_async", json={**MESSAGE, "to": address}, headers=AUTH)
    assert response.status_code == 202, response.text


def test_too_many_recipients_across_to_cc_bcc_is_422(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings(max_recipients=3))
    body = {**MESSAGE, "to": ["a@x.com", "b@x.com"], "cc": ["c@x.com"], "bcc": ["d@x.com"]}
    detail = assert_422(client.post("/send_async", json=body, headers=AUTH))
    assert "MAX_RECIPIENTS" in detail[0]["msg"]
    assert detail[0]["loc"] == ["body"]
    assert stored_rows(db_path) == []
    ok = client.post("/send_async", json={**body, "bcc": []}, headers=AUTH)
    assert ok.status_code == 202


# -- ALLOWED_SENDERS --------------------------------------------------------------


@pytest.fixture
def restricted(make_client: MakeClient, make_settings: MakeSettings) -> TestClient:
    return make_client(
        make_settings(allowed_senders="billing@example.com,@Mail.Example.org", mail_from="app@x.io")
    )


@pytest.mark.parametrize(
    "sender",
    [
        "billing@example.com",
        "Billing <billing@EXAMPLE.com>",
        "anyone@mail.example.org",
        "anyone@MAIL.EXAMPLE.ORG",
        "app@x.io",
    ],
)
def test_allowed_senders_accepts_listed_addresses_domains_and_mail_from(
    restricted: TestClient, sender: str
) -> None:
    response = restricted.post("/send_async", json={**MESSAGE, "from": sender}, headers=AUTH)
    assert response.status_code == 202, response.text


def test_omitted_from_is_mail_from_and_allowed(restricted: TestClient) -> None:
    assert restricted.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202


@pytest.mark.parametrize(
    "sender", ["ceo@example.com", "billing@example.com.evil.net", "x@sub.mail.example.org"]
)
def test_allowed_senders_refuses_any_other_from(
    restricted: TestClient, db_path: Path, sender: str
) -> None:
    detail = assert_422(
        restricted.post("/send_async", json={**MESSAGE, "from": sender}, headers=AUTH)
    )
    assert "ALLOWED_SENDERS" in detail[0]["msg"]
    assert detail[0]["loc"] == ["body", "from"]
    assert stored_rows(db_path) == []


# -- 413 -----------------------------------------------------------------------------


def test_body_over_max_message_bytes_is_413(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings(max_message_bytes=2000))
    response = client.post("/send", json={**MESSAGE, "body": "x" * 3000}, headers=AUTH)
    assert_error_shape(response, 413)
    assert stored_rows(db_path) == []


def test_chunked_body_over_max_message_bytes_is_413(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings(max_message_bytes=2000))

    def chunks() -> Any:
        yield b'{"to": "ana@example.com", "body": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = client.post(
        "/send_async", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_error_shape(response, 413)
    assert stored_rows(db_path) == []


def test_built_message_over_max_message_bytes_is_413(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    """A body under the limit that encodes to more (non-ASCII text grows) is still refused."""
    client = make_client(make_settings(max_message_bytes=4000))
    body = {**MESSAGE, "body": "é" * 1400, "html": "<p>" + "é" * 300 + "</p>"}
    request_size = len(json.dumps(body, ensure_ascii=False).encode())
    assert request_size < 4000
    response = client.post(
        "/send_async",
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error_shape(response, 413)
    assert "MAX_MESSAGE_BYTES" in response.json()["detail"]
    assert stored_rows(db_path) == []


def test_body_just_under_the_limit_is_accepted(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(max_message_bytes=3000))
    assert (
        client.post("/send_async", json={**MESSAGE, "body": "x" * 1500}, headers=AUTH).status_code
        == 202
    )


# -- rate limit ------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_refills(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer, db_path: Path
) -> None:
    clock = FakeClock(1000.0)
    client = make_client(make_settings(rate_limit_per_second=0.5, rate_limit_burst=2), clock=clock)
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    assert client.post("/send", json=MESSAGE, headers=AUTH).status_code == 200
    limited = client.post("/send_async", json={**MESSAGE, "subject": "third"}, headers=AUTH)
    assert_error_shape(limited, 429)
    assert limited.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert "third" not in [row["subject"] for row in stored_rows(db_path)]
    # Another key has its own bucket.
    assert (
        client.post("/send_async", json=MESSAGE, headers={"X-API-Key": OTHER_KEY}).status_code
        == 202
    )
    clock.advance(2.0)
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 429


def test_rate_limit_is_off_by_default(client: TestClient) -> None:
    for _ in range(30):
        assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202


def test_status_reads_are_not_rate_limited(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(
        make_settings(rate_limit_per_second=0.1, rate_limit_burst=1), clock=FakeClock(1000.0)
    )
    for _ in range(5):
        assert client.get("/messages/nope", headers=AUTH).status_code == 404


# -- Idempotency-Key ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/send", 200), ("/send_async", 202)])
def test_idempotent_repeat_replays_the_first_answer_and_sends_once(
    client: TestClient, relay: FakeSMTPServer, db_path: Path, path: str, status: int
) -> None:
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = client.post(path, json=MESSAGE, headers=headers)
    assert first.status_code == status
    relay.wait_for(1)
    again = client.post(path, json=MESSAGE, headers=headers)
    assert again.status_code == status
    assert again.json() == first.json()
    assert len(stored_rows(db_path)) == 1
    assert len(relay.messages()) == 1


def test_idempotent_repeat_of_a_failed_send_replays_the_500(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 Nope"))
    headers = {**AUTH, "Idempotency-Key": "k-500"}
    first = client.post("/send", json=MESSAGE, headers=headers)
    assert first.status_code == 500
    again = client.post("/send", json=MESSAGE, headers=headers)
    assert again.status_code == 500
    assert again.json() == first.json()


def test_same_idempotency_key_with_another_body_is_422(client: TestClient, db_path: Path) -> None:
    headers = {**AUTH, "Idempotency-Key": "k-1"}
    assert client.post("/send_async", json=MESSAGE, headers=headers).status_code == 202
    detail = assert_422(
        client.post("/send_async", json={**MESSAGE, "subject": "other"}, headers=headers)
    )
    assert detail[0]["loc"] == ["header", "Idempotency-Key"]
    assert len(stored_rows(db_path)) == 1


def test_same_idempotency_key_on_the_other_endpoint_is_422_not_a_replay(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    headers = {**AUTH, "Idempotency-Key": "k-both"}
    assert client.post("/send_async", json=MESSAGE, headers=headers).status_code == 202
    assert_422(client.post("/send", json=MESSAGE, headers=headers))


def test_same_request_written_differently_is_the_same_request(client: TestClient) -> None:
    headers = {**AUTH, "Idempotency-Key": "k-2"}
    first = client.post("/send_async", json={**MESSAGE, "to": "ana@example.com"}, headers=headers)
    again = client.post("/send_async", json={**MESSAGE, "to": ["ana@example.com"]}, headers=headers)
    assert again.json() == first.json()


def test_idempotency_keys_are_scoped_per_api_key(client: TestClient, db_path: Path) -> None:
    first = client.post("/send_async", json=MESSAGE, headers={**AUTH, "Idempotency-Key": "same"})
    other = client.post(
        "/send_async", json=MESSAGE, headers={"X-API-Key": OTHER_KEY, "Idempotency-Key": "same"}
    )
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]
    assert len(stored_rows(db_path)) == 2


def test_idempotency_scope_stores_no_api_key(client: TestClient, db_path: Path) -> None:
    client.post("/send_async", json=MESSAGE, headers={**AUTH, "Idempotency-Key": "k-3"})
    [row] = stored_rows(db_path)
    assert row["idempotency_scope"].endswith(":k-3")
    assert KEY not in json.dumps(row, default=str)


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there"])
def test_malformed_idempotency_key_is_422(client: TestClient, key: str) -> None:
    assert_422(client.post("/send", json=MESSAGE, headers={**AUTH, "Idempotency-Key": key}))


# -- errors in general -------------------------------------------------------------------


def test_unknown_route_is_404_with_detail(client: TestClient) -> None:
    assert_error_shape(client.get("/nowhere"), 404)


def test_wrong_method_is_405_with_detail(client: TestClient) -> None:
    assert_error_shape(client.get("/send", headers=AUTH), 405)


# -- /metrics ---------------------------------------------------------------------------


def test_metrics_is_public_prometheus_text(client: TestClient) -> None:
    client.post("/send_async", json=MESSAGE, headers=AUTH)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'mail_accepted_total{endpoint="send_async"} 1.0' in response.text
    assert "mail_backlog" in response.text


def test_metrics_can_be_turned_off(make_client: MakeClient, make_settings: MakeSettings) -> None:
    client = make_client(make_settings(metrics_enabled=False))
    assert client.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    """Latency series are labelled with the route template, so ids never become labels."""
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    assert client.get("/messages/0123abcd", headers=AUTH).status_code == 404
    assert client.get("/messages/feedbeef", headers=AUTH).status_code == 404
    assert client.get("/no/such/path").status_code == 404
    text = client.get("/metrics").text
    assert re.search(
        r'http_request_duration_seconds_count\{method="POST",'
        r'route="/send_async",status="202"\} 1\.0',
        text,
    )
    assert re.search(
        r'http_request_duration_seconds_count\{method="GET",'
        r'route="/messages/\{message_id\}",status="404"\} 2\.0',
        text,
    )
    assert 'route="unmatched",status="404"' in text
    assert "0123abcd" not in text
    assert re.search(r'mail_accepted_total\{endpoint="send_async"\} 1\.0', text)
