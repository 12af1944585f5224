"""Property: any JSON body posted to the send endpoints gets a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.helpers import AUTH, MakeClient, MakeSettings

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
addresses = st.one_of(
    st.sampled_from(
        [
            "ana@example.com",
            '"Doe, J" <j@example.com>',
            "jörg@bücher.de",
            "a@x.com, b@y.com",
            "用户@例子.广告",
            "noreply@localhost",
        ]
    ),
    st.builds(lambda a, b: f"{a}@{b}.com", st.text(min_size=1, max_size=8), st.text(max_size=8)),
)
texts = st.text(max_size=60)
request_bodies = st.fixed_dictionaries(
    {"to": st.one_of(addresses, st.lists(addresses, min_size=1, max_size=3))},
    optional={
        "cc": st.lists(addresses, max_size=2),
        "bcc": st.lists(addresses, max_size=2),
        "subject": texts,
        "body": texts,
        "html": texts,
        "from": addresses,
        "reply_to": addresses,
        "headers": st.dictionaries(st.text(max_size=10), texts, max_size=3),
    },
)
any_body = st.one_of(request_bodies, json_values)


@pytest.fixture
def client(make_client: MakeClient, make_settings: MakeSettings) -> TestClient:
    return make_client(make_settings(queue_maxsize=100_000, max_recipients=5))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=any_body)
def test_any_json_to_send_async_is_never_a_server_error(client: TestClient, body: Any) -> None:
    response = client.post(
        "/send_async",
        content=json.dumps(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code in {202, 413, 422}, response.text
    assert "detail" in response.json() or response.json()["status"] == "queued"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=request_bodies)
def test_any_request_to_send_is_200_or_4xx_with_a_working_relay(
    client: TestClient, body: Any
) -> None:
    response = client.post("/send", json=body, headers=AUTH)
    # fakesmtp offers SMTPUTF8 and accepts everything, so no request may end in a 500.
    assert response.status_code in {200, 413, 422}, response.text
