"""POST /send_batch: all or nothing, results in request order, one reservation, one
Idempotency-Key for the batch, each refusal naming the item's index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTPServer, FaultRule
from service.models import BatchRequest
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows, wait_status
from tests.helpers import wait_until

pytestmark = pytest.mark.unit


def item(n: int, **fields: Any) -> dict[str, Any]:
    return {"to": f"r{n}@example.com", "subject": f"receipt {n}", "body": "thanks", **fields}


def test_a_batch_is_queued_and_delivered_in_request_order(
    client: TestClient, relay: FakeSMTPServer, db_path: Path
) -> None:
    response = client.post(
        "/send_batch", json={"messages": [item(n) for n in range(20)]}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued"] * 20
    assert all(r["ok"] and r["error"] is None for r in results)
    for n, result in enumerate(results):
        record = wait_status(client, result["id"], "sent")
        assert record["subject"] == f"receipt {n}"
        assert record["to"] == [f"r{n}@example.com"]
    assert len(relay.messages()) == 20
    assert len(stored_rows(db_path)) == 20


def test_one_invalid_item_refuses_the_batch_naming_its_index(
    client: TestClient, relay: FakeSMTPServer, db_path: Path
) -> None:
    messages = [item(0), item(1), item(2, to="not an address"), item(3)]
    response = client.post("/send_batch", json={"messages": messages}, headers=AUTH)
    assert response.status_code == 422, response.text
    locs = [e["loc"][:4] for e in response.json()["detail"]]
    assert locs == [["body", "messages", 2, "to"]]
    assert stored_rows(db_path) == []
    assert relay.messages() == []


def test_a_settings_check_names_the_index_too(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings(max_recipients=2, max_message_bytes=2000))
    crowded = item(1, cc=["a@example.com", "b@example.com"])
    response = client.post("/send_batch", json={"messages": [item(0), crowded]}, headers=AUTH)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "messages", 1]
    assert "MAX_RECIPIENTS" in error["msg"]
    big = item(1, body="x " * 1500)
    response = client.post("/send_batch", json={"messages": [item(0), big]}, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("messages[1]: the built message is")
    assert stored_rows(db_path) == []


def test_over_batch_max_or_empty_is_422(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(batch_max=3))
    response = client.post(
        "/send_batch", json={"messages": [item(n) for n in range(4)]}, headers=AUTH
    )
    assert response.status_code == 422
    assert "BATCH_MAX" in response.json()["detail"][0]["msg"]
    response = client.post("/send_batch", json={"messages": []}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "messages"]


def test_no_room_for_the_whole_batch_is_503_and_stores_nothing(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer, db_path: Path
) -> None:
    # Every RCPT 451: nothing leaves the backlog meanwhile.
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 hold"))
    client = make_client(make_settings(queue_maxsize=5))
    assert (
        client.post(
            "/send_batch", json={"messages": [item(n) for n in range(3)]}, headers=AUTH
        ).status_code
        == 202
    )
    response = client.post(
        "/send_batch", json={"messages": [item(n) for n in range(3)]}, headers=AUTH
    )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert len(stored_rows(db_path)) == 3
    # What fits still goes: the bound is by messages, not by requests.
    assert (
        client.post("/send_batch", json={"messages": [item(0), item(1)]}, headers=AUTH).status_code
        == 202
    )


def test_scheduled_items_take_no_place_until_due(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(queue_maxsize=2))
    soon = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    messages = [item(n, send_at=soon) for n in range(4)] + [item(9)]
    response = client.post("/send_batch", json={"messages": messages}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert [r["status"] for r in response.json()["results"]] == ["scheduled"] * 4 + ["queued"]
    too_far = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    response = client.post(
        "/send_batch", json={"messages": [item(0), item(1, send_at=too_far)]}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "messages", 1, "send_at"]


def test_idempotency_key_covers_the_whole_batch(client: TestClient, db_path: Path) -> None:
    body = {"messages": [item(n) for n in range(5)]}
    headers = {**AUTH, "Idempotency-Key": "batch-1"}
    first = client.post("/send_batch", json=body, headers=headers)
    again = client.post("/send_batch", json=body, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(stored_rows(db_path)) == 5
    other = client.post("/send_batch", json={"messages": [item(0)]}, headers=headers)
    assert other.status_code == 422
    single = client.post("/send_async", json=item(0), headers=headers)
    assert single.status_code == 422  # one key, another endpoint: not a replay


def test_batch_items_carry_tags_metadata_and_owner(client: TestClient) -> None:
    messages = [item(0, tags=["receipt"], metadata={"order": "1"}), item(1)]
    results = client.post("/send_batch", json={"messages": messages}, headers=AUTH).json()[
        "results"
    ]
    record = client.get(f"/messages/{results[0]['id']}", headers=AUTH).json()
    assert (record["tags"], record["metadata"]) == (["receipt"], {"order": "1"})
    listed = client.get("/messages", params={"tag": "receipt"}, headers=AUTH).json()
    assert [m["id"] for m in listed["messages"]] == [results[0]["id"]]


def test_batch_body_limit_is_batch_max_bytes(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(max_message_bytes=1000, batch_max_bytes=5000))
    fits = {"messages": [item(n, body="x" * 500) for n in range(6)]}  # > 1000, < 5000
    assert client.post("/send_batch", json=fits, headers=AUTH).status_code == 202
    over = {"messages": [item(n, body="x" * 500) for n in range(12)]}
    response = client.post("/send_batch", json=over, headers=AUTH)
    assert response.status_code == 413
    assert response.json() == {
        "detail": "request body over 5000 bytes (BATCH_MAX_BYTES): split the batch into "
        "smaller ones; the service's operator can raise BATCH_MAX_BYTES"
    }


def test_batch_without_a_key_is_401_even_when_invalid(client: TestClient) -> None:
    assert client.post("/send_batch", json={"messages": []}).status_code == 401


def test_the_backlog_counts_a_delivered_batch_down(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(queue_maxsize=10))
    worker = client.app.state.services.worker  # type: ignore[attr-defined]
    for _ in range(3):
        response = client.post(
            "/send_batch", json={"messages": [item(n) for n in range(10)]}, headers=AUTH
        )
        assert response.status_code == 202, response.text
        wait_until(lambda: worker.backlog == 0, what="the batch delivered and counted down")


@settings(max_examples=60, deadline=None)
@given(
    bad=st.integers(min_value=0, max_value=9),
    size=st.integers(min_value=1, max_value=10),
    field=st.sampled_from(["to", "subject", "tags", "metadata", "from"]),
)
def test_any_one_bad_item_is_named_by_its_index(bad: int, size: int, field: str) -> None:
    """Validation alone (the model): the first error's loc starts with the bad index."""
    bad_values: dict[str, Any] = {
        "to": "two@example.com, addresses@example.com",
        "subject": "line\r\nBcc: x@evil.example",
        "tags": ["no spaces allowed"],
        "metadata": {"k": 7},
        "from": "<broken",
    }
    index = bad % size
    messages = [item(n) for n in range(size)]
    messages[index] = {**messages[index], field: bad_values[field]}
    try:
        BatchRequest.model_validate({"messages": messages})
    except ValueError as exc:
        errors = exc.errors()  # type: ignore[attr-defined]
        assert {e["loc"][:2] for e in errors} == {("messages", index)}
    else:
        raise AssertionError("accepted a bad item")
