"""Every error answer has one shape, documented in the README's "Errors": a JSON
object whose `detail` is a list of field errors (422) or one string (every other
refusal), each message saying what to do; /send's 500 carries the relay's reply as
the record's `last_error` keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from service.api.errors import install_error_handlers
from service.config import Settings
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows, wait_status
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Hi", "body": "the text"}
JSON_HINT = "send a JSON object with Content-Type: application/json"
PRIVATE = "private-words-of-the-message-7731"


def compact(value: Any) -> str:
    """JSON as Starlette's JSONResponse writes it: what every error answer looks like."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def detail_text(response: Any, status: int) -> str:
    """The detail of a non-422 refusal, once its shape is checked: {"detail": "..."}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str)
    assert response.text == compact(body)
    return body["detail"]  # type: ignore[no-any-return]


def field_errors(response: Any) -> list[dict[str, Any]]:
    """The items of a 422, once its shape is checked: {"detail": [{loc, msg, type}]}."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], list)
    assert body["detail"]
    for item in body["detail"]:
        assert {"loc", "msg", "type"} <= set(item) <= {"loc", "msg", "type", "input", "ctx"}
        assert isinstance(item["msg"], str)
        assert item["msg"]
    return body["detail"]  # type: ignore[no-any-return]


def only_error(response: Any) -> dict[str, Any]:
    [item] = field_errors(response)
    return item


# -- /send's 500: the relay's code, as last_error keeps it --------------------------------


def test_send_500_error_carries_the_smtp_code_as_last_error_does(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 No such user"))
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error == "550 5.1.1 No such user (recipient ana@example.com)"
    record = client.get(f"/messages/{response.json()['id']}", headers=AUTH).json()
    assert record["last_error"] == error


def test_send_500_after_temporary_failures_carries_the_last_reply_with_its_code(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="mail", action="reply", code=451, message="4.3.0 try later"))
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"] == "451 4.3.0 try later"
    record = client.get(f"/messages/{response.json()['id']}", headers=AUTH).json()
    assert record["last_error"] == "451 4.3.0 try later"


# -- a body that is not a JSON object: 422 saying how to send one ------------------------


@pytest.mark.parametrize(
    ("headers", "given"),
    [
        pytest.param({}, "no Content-Type", id="no-content-type"),
        pytest.param({"Content-Type": "text/plain"}, "Content-Type text/plain", id="text"),
        pytest.param(
            {"Content-Type": "application/x-www-form-urlencoded"},
            "Content-Type application/x-www-form-urlencoded",
            id="form",
        ),
    ],
)
@pytest.mark.parametrize("endpoint", ["/send", "/send_async", "/send_batch"])
def test_a_json_body_without_the_json_content_type_is_told_to_send_it(
    client: TestClient, db_path: Path, endpoint: str, headers: dict[str, str], given: str
) -> None:
    content = json.dumps({**MESSAGE, "body": PRIVATE}).encode()
    response = client.post(endpoint, content=content, headers={**AUTH, **headers})
    item = only_error(response)
    assert item["loc"] == ["body"]
    assert item["msg"] == f"the body was sent with {given}, not as JSON: {JSON_HINT}"
    assert PRIVATE not in response.text  # the raw body is not echoed
    assert stored_rows(db_path) == []


def test_a_json_array_is_told_to_be_an_object(client: TestClient) -> None:
    item = only_error(client.post("/send", json=[MESSAGE], headers=AUTH))
    assert item["loc"] == ["body"]
    assert item["msg"] == "the body must be a JSON object of the request's fields (see /docs)"


def test_an_empty_body_is_told_to_send_json(client: TestClient) -> None:
    response = client.post("/send", headers={**AUTH, "Content-Type": "application/json"})
    item = only_error(response)
    assert (item["loc"], item["type"]) == (["body"], "missing")
    assert item["msg"] == f"the body is empty: {JSON_HINT}"


def test_malformed_json_says_where_and_what_to_send(client: TestClient) -> None:
    response = client.post(
        "/send", content=b'{"to": ', headers={**AUTH, "Content-Type": "application/json"}
    )
    item = only_error(response)
    assert item["type"] == "json_invalid"
    assert (
        item["msg"] == f"the body is not valid JSON (Expecting value at character 7): {JSON_HINT}"
    )
    assert "input" not in item


def test_a_body_that_is_not_utf8_is_told_to_send_json(client: TestClient) -> None:
    response = client.post(
        "/send", content=b"{\xff\xfe}", headers={**AUTH, "Content-Type": "application/json"}
    )
    item = only_error(response)
    assert item["loc"] == ["body"]
    assert item["msg"] == f"the body is not UTF-8 text: {JSON_HINT}"


# -- our own validators: no "Value error, " ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "loc", "msg"),
    [
        pytest.param(
            {"body": None},
            ["body"],
            "give at least one of 'body' and 'html'",
            id="model-validator",
        ),
        pytest.param(
            {"to": "a@x.com, b@y.com"},
            ["body", "to", 0],
            "one address per item: send several recipients as a JSON list, e.g. "
            '["a@example.com", "b@example.com"]',
            id="address",
        ),
        pytest.param(
            {"subject": "a\nb"},
            ["body", "subject"],
            "control character U+000A is not allowed (no header injection)",
            id="header-text",
        ),
        pytest.param(
            {"headers": {"From": "x@example.com"}},
            ["body", "headers"],
            "header 'From' is reserved: use the request field 'from'",
            id="reserved-header",
        ),
        pytest.param(
            {"attachments": [{"filename": "a.txt", "content": "!!"}]},
            ["body", "attachments", 0, "content"],
            "content is not valid base64 (the standard alphabet, padded with '='; no line breaks)",
            id="base64",
        ),
    ],
)
def test_validator_messages_are_ours_without_pydantics_prefix(
    client: TestClient, fields: dict[str, Any], loc: list[Any], msg: str
) -> None:
    item = only_error(client.post("/send", json={**MESSAGE, **fields}, headers=AUTH))
    assert item["loc"] == loc
    assert item["msg"] == msg
    assert item["type"] == "value_error"
    assert "ctx" not in item  # pydantic's ctx held only the exception, shown as {}


def test_a_batch_item_is_named_by_index_without_the_prefix(client: TestClient) -> None:
    batch = {"messages": [MESSAGE, {**MESSAGE, "body": None}]}
    item = only_error(client.post("/send_batch", json=batch, headers=AUTH))
    assert item["loc"] == ["body", "messages", 1]
    assert item["msg"] == "give at least one of 'body' and 'html'"


def test_a_batch_item_that_is_not_an_object_is_told_so(client: TestClient) -> None:
    item = only_error(client.post("/send_batch", json={"messages": [MESSAGE, 3]}, headers=AUTH))
    assert item["loc"] == ["body", "messages", 1]
    assert item["msg"] == "each item of 'messages' must be a JSON object of a message's fields"


def test_a_whole_request_refused_is_not_echoed_with_its_text(client: TestClient) -> None:
    """A model-level refusal's input is the whole request: it is left out, as no
    answer ever carries a message's text."""
    inline = {"filename": "logo.png", "content": "iVBORw0KGgo=", "content_id": "logo"}
    message = {**MESSAGE, "body": PRIVATE, "attachments": [inline]}
    response = client.post("/send", json=message, headers=AUTH)
    item = only_error(response)
    assert item["msg"].startswith("an attachment with content_id is inline")
    assert PRIVATE not in response.text


def test_a_bad_idempotency_key_is_told_the_rule_in_words(client: TestClient) -> None:
    response = client.post("/send", json=MESSAGE, headers={**AUTH, "Idempotency-Key": "a b"})
    item = only_error(response)
    assert item["loc"] == ["header", "Idempotency-Key"]
    assert item["msg"] == (
        "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces, e.g. a UUID"
    )


# -- every other refusal: {"detail": "..."} saying what to do ----------------------------


def test_401_says_which_header_to_send(client: TestClient) -> None:
    response = client.post("/send", json=MESSAGE, headers={"X-API-Key": "wrong"})
    assert detail_text(response, 401) == (
        "missing or wrong API key: send one of the service's keys (API_KEY) in the X-API-Key header"
    )
    assert response.headers["WWW-Authenticate"] == "APIKey"


def test_401_comes_before_a_body_that_is_not_json(client: TestClient) -> None:
    response = client.post("/send", content=b"x", headers={"Content-Type": "text/plain"})
    assert detail_text(response, 401).startswith("missing or wrong API key:")


@pytest.mark.parametrize(
    ("endpoint", "setting", "remedy"),
    [
        ("/send", "MAX_MESSAGE_BYTES", "send fewer or smaller attachments"),
        ("/send_batch", "BATCH_MAX_BYTES", "split the batch into smaller ones"),
    ],
)
def test_413_has_the_common_shape_and_names_the_setting(
    make_client: MakeClient,
    make_settings: MakeSettings,
    endpoint: str,
    setting: str,
    remedy: str,
) -> None:
    client = make_client(make_settings(max_message_bytes=1000, batch_max_bytes=2000))
    message = {**MESSAGE, "body": "x" * 3000}
    body = {"messages": [message]} if endpoint == "/send_batch" else message
    limit = 2000 if endpoint == "/send_batch" else 1000
    response = client.post(endpoint, json=body, headers=AUTH)
    assert detail_text(response, 413) == (
        f"request body over {limit} bytes ({setting}): {remedy}; the service's operator "
        f"can raise {setting}"
    )


def test_413_of_a_chunked_body_has_the_same_text(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    """A body without Content-Length is refused once read past the limit, through the
    exception handler rather than the middleware's own answer: the two say the same."""
    client = make_client(make_settings(max_message_bytes=1000))
    chunks = iter([b"x" * 600, b"x" * 600])
    response = client.post(
        "/send", content=chunks, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert detail_text(response, 413) == (
        "request body over 1000 bytes (MAX_MESSAGE_BYTES): send fewer or smaller "
        "attachments; the service's operator can raise MAX_MESSAGE_BYTES"
    )


def test_404_of_a_record_says_what_to_use(client: TestClient) -> None:
    assert detail_text(client.get("/messages/nope", headers=AUTH), 404) == (
        "no message with this id: use the id a send answered, with the API key (or a key "
        "of the same name) that sent it"
    )


def test_404_of_a_suppression_says_there_is_nothing_to_remove(client: TestClient) -> None:
    response = client.delete("/suppressions/ana@example.com", headers=AUTH)
    assert detail_text(response, 404) == (
        "this address is not on the suppression list: nothing to remove"
    )


def test_unknown_path_and_wrong_method_point_to_the_docs(client: TestClient) -> None:
    assert detail_text(client.get("/nowhere"), 404) == (
        "no such path: the API's paths are listed at /docs"
    )
    wrong = client.get("/send", headers=AUTH)
    assert (
        detail_text(wrong, 405) == "this method is not allowed on this path: use POST (see /docs)"
    )
    assert wrong.headers["Allow"] == "POST"


def test_409_of_a_cancel_says_which_status(client: TestClient) -> None:
    made = client.post("/send_async", json=MESSAGE, headers=AUTH).json()
    wait_status(client, made["id"], "sent")
    response = client.post(f"/messages/{made['id']}/cancel", headers=AUTH)
    assert detail_text(response, 409) == (
        "the message is sent: only a scheduled or queued message (not yet claimed by a "
        "delivery) can be cancelled"
    )


def test_429_says_when_to_retry(make_client: MakeClient, make_settings: MakeSettings) -> None:
    settings = make_settings(rate_limit_per_second=0.5, rate_limit_burst=1)
    client = make_client(settings, clock=FakeClock(1000.0))
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    response = client.post("/send_async", json=MESSAGE, headers=AUTH)
    assert detail_text(response, 429) == (
        "rate limit exceeded for this API key: retry after the seconds in Retry-After"
    )
    assert response.headers["Retry-After"] == "2"


def test_503_queue_full_says_nothing_was_stored_and_when_to_retry(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="data", action="delay", delay=3.0, times=1))
    client = make_client(make_settings(queue_maxsize=1, worker_concurrency=1))
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    one = client.post("/send_async", json=MESSAGE, headers=AUTH)
    assert detail_text(one, 503) == (
        "no room in the queue for the message (QUEUE_MAXSIZE): nothing was stored; retry "
        "after the seconds in Retry-After"
    )
    batch = client.post("/send_batch", json={"messages": [MESSAGE, MESSAGE]}, headers=AUTH)
    assert detail_text(batch, 503) == (
        "no room in the queue for the batch's 2 messages (QUEUE_MAXSIZE): nothing was "
        "stored; retry after the seconds in Retry-After"
    )
    assert int(one.headers["Retry-After"]) >= 1


def test_503_database_unavailable_says_when_to_retry(
    client: TestClient, settings: Settings, db_path: Path
) -> None:
    assert client.post("/send_async", json=MESSAGE, headers=AUTH).status_code == 202
    moved = db_path.with_suffix(".moved")
    db_path.rename(moved)
    try:
        response = client.post("/send_async", json=MESSAGE, headers=AUTH)
    finally:
        moved.rename(db_path)
    assert detail_text(response, 503) == (
        "the database is unavailable: nothing was stored; retry after the seconds in Retry-After"
    )
    assert response.headers["Retry-After"] == "5"


def test_an_unexpected_error_is_a_json_500_in_the_same_shape(settings: Settings) -> None:
    app = FastAPI()
    install_error_handlers(app, settings, lambda _settings, _key: True)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert detail_text(response, 500) == (
        "internal error, logged by the service: retry later, and report it if it persists"
    )
