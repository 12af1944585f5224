"""SendRoute answers exactly what FastAPI's own request handler answers.

The send endpoints are served by service/api/send_route.py, which resolves their
arguments without FastAPI's generic dependency solving. Here the same requests go
to the service and to a reference app whose send routes are plain APIRoutes (the
same endpoints, settings and error handlers), and every answer must match: status,
the headers a client acts on, and the whole body (for a 2xx, its keys, since ids
differ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api import routes
from service.api.send_route import SendRoute
from tests.api.helpers import AUTH, MakeClient, MakeSettings

pytestmark = pytest.mark.unit

PATHS = ("/send_async", "/send_batch", "/send")
HEADERS_COMPARED = ("content-type", "retry-after", "www-authenticate", "connection")

GOOD = {"to": ["ana@example.com"], "subject": "Hi", "body": "Hello"}


@pytest.fixture
def pair(
    make_settings: MakeSettings,
    make_client: MakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[TestClient, TestClient]:
    """The service, and the reference: the same app with FastAPI's APIRoute."""
    # Small enough that the batch's byte limit is reachable in a test.
    service = make_client(make_settings(batch_max_bytes=4096))
    monkeypatch.setattr(routes, "SendRoute", APIRoute)
    reference = make_client(
        make_settings(database_url=f"sqlite:///{tmp_path / 'reference.db'}", batch_max_bytes=4096)
    )
    assert route_classes(service) == dict.fromkeys(PATHS, SendRoute)
    assert route_classes(reference) == dict.fromkeys(PATHS, APIRoute)
    return service, reference


def route_classes(client: TestClient) -> dict[str, type]:
    app = cast(FastAPI, client.app)
    return {r.path: type(r) for r in app.routes if isinstance(r, APIRoute) and r.path in PATHS}


def answer(client: TestClient, path: str, content: bytes | None, headers: dict[str, str]) -> Any:
    response = client.post(path, content=content, headers=headers)
    kept = {name: response.headers.get(name) for name in HEADERS_COMPARED}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if 200 <= response.status_code < 300 and isinstance(body, dict):
        body = sorted(body)  # ids and Message-IDs differ; the shape must not
    return response.status_code, kept, body


def assert_same(
    pair: tuple[TestClient, TestClient],
    path: str,
    content: bytes | None,
    headers: dict[str, str],
) -> None:
    service, reference = pair
    assert answer(service, path, content, headers) == answer(reference, path, content, headers)


JSON = {**AUTH, "Content-Type": "application/json"}
NESTED = b"[" * 100_000 + b"]" * 100_000

CASES: list[tuple[str, bytes | None, dict[str, str]]] = [
    # the body itself
    ("no body", None, JSON),
    ("empty body", b"", JSON),
    ("invalid JSON", b'{"to": [', JSON),
    ("trailing garbage", b'{"to": ["a@example.com"]} x', JSON),
    ("not UTF-8", b'{"to": ["\xff"]}', JSON),
    ("UTF-16", json.dumps(GOOD).encode("utf-16"), JSON),
    ("nested too deep", NESTED, JSON),
    ("a list", b"[]", JSON),
    ("a string", b'"hello"', JSON),
    ("null", b"null", JSON),
    ("a number", b"12", JSON),
    # its content type
    ("no content type", json.dumps(GOOD).encode(), AUTH),
    ("text/plain", json.dumps(GOOD).encode(), {**AUTH, "Content-Type": "text/plain"}),
    ("form", b"to=a@example.com", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
    ("+json", json.dumps(GOOD).encode(), {**AUTH, "Content-Type": "application/merge-patch+json"}),
    (
        "charset",
        json.dumps(GOOD).encode(),
        {**AUTH, "Content-Type": "application/json; charset=utf-8"},
    ),
    ("upper case", json.dumps(GOOD).encode(), {**AUTH, "Content-Type": "Application/JSON"}),
    ("no subtype", json.dumps(GOOD).encode(), {**AUTH, "Content-Type": "application/"}),
    # fields
    ("missing to", b'{"subject": "x"}', JSON),
    ("extra field", json.dumps({**GOOD, "colour": "red"}).encode(), JSON),
    ("bad address", json.dumps({**GOOD, "to": ["not an address"]}).encode(), JSON),
    ("bad header", json.dumps({**GOOD, "headers": {"X-A": "a\r\nBcc: b"}}).encode(), JSON),
    ("reserved header", json.dumps({**GOOD, "headers": {"From": "x@example.com"}}).encode(), JSON),
    ("several errors", json.dumps({"to": [], "cc": "x", "body": 3}).encode(), JSON),
    ("send_at in the past", json.dumps({**GOOD, "send_at": "2000-01-01T00:00:00Z"}).encode(), JSON),
    ("too large", json.dumps({**GOOD, "body": "x" * 5000}).encode(), JSON),
    # the key
    ("no key, bad body", b"{", {"Content-Type": "application/json"}),
    ("wrong key, good body", json.dumps(GOOD).encode(), {**JSON, "X-API-Key": "nope"}),
    ("wrong key, bad field", b'{"to": 1}', {**JSON, "X-API-Key": "nope"}),
    # the Idempotency-Key
    ("empty idempotency key", json.dumps(GOOD).encode(), {**JSON, "Idempotency-Key": ""}),
    ("spaced idempotency key", json.dumps(GOOD).encode(), {**JSON, "Idempotency-Key": "a b"}),
    ("long idempotency key", json.dumps(GOOD).encode(), {**JSON, "Idempotency-Key": "k" * 256}),
    ("bad key and bad body", b'{"to": 1}', {**JSON, "Idempotency-Key": "a b"}),
    # accepted
    ("good", json.dumps(GOOD).encode(), JSON),
    ("good, with a key", json.dumps(GOOD).encode(), {**JSON, "Idempotency-Key": "same-key-1"}),
    ("good, the key again", json.dumps(GOOD).encode(), {**JSON, "Idempotency-Key": "same-key-1"}),
    (
        "the key, another body",
        b'{"to": ["b@example.com"]}',
        {**JSON, "Idempotency-Key": "same-key-1"},
    ),
]


def _batch(body: bytes | None) -> bytes | None:
    """The same case for /send_batch: the body as its one message, when it is JSON."""
    if not body:
        return body
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body
    return json.dumps({"messages": [value]}).encode()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("case", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_every_case_answers_as_fastapi_does(
    pair: tuple[TestClient, TestClient],
    path: str,
    case: str,
    body: bytes | None,
    headers: dict[str, str],
) -> None:
    if path == "/send_batch":
        body = _batch(body)
    assert_same(pair, path, body, headers)


def test_a_repeated_idempotency_key_answers_as_fastapi_does(
    pair: tuple[TestClient, TestClient],
) -> None:
    keyed = {**JSON, "Idempotency-Key": "order-1"}
    for body in (GOOD, GOOD, {**GOOD, "subject": "changed"}, {"to": 1}):
        assert_same(pair, "/send_async", json.dumps(body).encode(), keyed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
fields = st.sampled_from(
    ["to", "cc", "bcc", "subject", "body", "html", "from", "reply_to", "headers", "tags"]
)
bodies = st.dictionaries(fields, json_values, max_size=4) | json_values
# What a client can put in a header: visible ASCII, spaces and tabs.
idempotency_keys = st.none() | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=6
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, key=idempotency_keys, path=st.sampled_from(["/send_async", "/send_batch"]))
def test_any_json_body_answers_as_fastapi_does(
    pair: tuple[TestClient, TestClient], body: Any, key: str | None, path: str
) -> None:
    headers = dict(JSON)
    if key is not None:
        headers["Idempotency-Key"] = key
    content = json.dumps({"messages": [body]} if path == "/send_batch" else body).encode()
    assert_same(pair, path, content, headers)


def test_a_route_whose_endpoint_takes_other_arguments_is_refused_at_start() -> None:
    async def endpoint(payload: dict[str, Any], context: Any) -> Any:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="SendRoute serves"):
        SendRoute("/x", endpoint, methods=["POST"])
