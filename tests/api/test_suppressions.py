"""The suppression list over HTTP: sends to a listed address are refused with a 422
naming it (nothing stored), a permanent RCPT refusal lists the address, and the list
pages, adds and removes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from tests.api.helpers import AUTH, OTHER_KEY, stored_rows, wait_status

OTHER_AUTH = {"X-API-Key": OTHER_KEY}

pytestmark = pytest.mark.unit


def test_a_send_to_a_suppressed_address_is_a_422_naming_it_and_stores_nothing(
    client: TestClient, db_path: Path, relay: FakeSMTPServer
) -> None:
    assert client.put("/suppressions/Gone@Example.com", headers=AUTH).status_code == 201
    for path in ("/send", "/send_async"):
        response = client.post(
            path,
            json={"to": "ok@example.com", "cc": ["gone@example.com"], "subject": "s", "body": "b"},
            headers=AUTH,
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "cc"]
        assert "gone@example.com is on the suppression list" in error["msg"]
    assert stored_rows(db_path) == []
    assert relay.messages() == []


def test_a_batch_naming_a_suppressed_address_is_refused_whole_with_the_items_index(
    client: TestClient, db_path: Path
) -> None:
    client.put("/suppressions/gone@example.com", headers=AUTH)
    items = [{"to": f"r{n}@example.com", "subject": "s", "body": "b"} for n in range(3)]
    items[2]["to"] = "Gone@example.com"
    response = client.post("/send_batch", json={"messages": items}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "messages", 2, "to"]
    assert stored_rows(db_path) == []


def test_a_permanent_rcpt_refusal_lists_the_address_for_every_key(
    client: TestClient, relay: FakeSMTPServer, db_path: Path
) -> None:
    relay.add_fault(
        FaultRule(stage="rcpt", code=550, message="5.1.1 No such user", match="^nobody@")
    )
    made = client.post(
        "/send_async",
        json={"to": ["nobody@example.com", "ana@example.com"], "subject": "s", "body": "b"},
        headers=AUTH,
    ).json()
    wait_status(client, made["id"], "sent")
    listed = client.get("/suppressions", headers=OTHER_AUTH).json()["suppressions"]
    assert [(s["address"], s["reason"], s["message_id"]) for s in listed] == [
        ("nobody@example.com", "hard_bounce", made["id"])
    ]
    again = client.post(
        "/send_async", json={"to": "nobody@example.com", "subject": "s", "body": "b"}, headers=AUTH
    )
    assert again.status_code == 422


def test_put_is_idempotent_delete_removes_and_a_second_delete_is_404(client: TestClient) -> None:
    first = client.put("/suppressions/a@example.com", headers=AUTH)
    again = client.put("/suppressions/a@example.com", headers=AUTH)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert first.json()["reason"] == "manual"
    assert client.delete("/suppressions/a@example.com", headers=AUTH).status_code == 204
    assert client.delete("/suppressions/a@example.com", headers=AUTH).status_code == 404
    response = client.post(
        "/send_async", json={"to": "a@example.com", "subject": "s", "body": "b"}, headers=AUTH
    )
    assert response.status_code == 202


def test_the_list_pages_with_cursors_and_refuses_a_foreign_cursor(client: TestClient) -> None:
    for n in range(7):
        client.put(f"/suppressions/user{n}@example.com", headers=AUTH)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/suppressions", params=params, headers=AUTH).json()
        seen.extend(s["address"] for s in page["suppressions"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"user{n}@example.com" for n in range(7))
    assert len(seen) == len(set(seen))
    bad = client.get("/suppressions", params={"cursor": "not-a-cursor"}, headers=AUTH)
    assert bad.status_code == 422


def test_a_bad_address_is_a_422_and_the_list_needs_a_key(client: TestClient) -> None:
    assert client.put("/suppressions/not-an-address", headers=AUTH).status_code == 422
    assert client.get("/suppressions").status_code == 401
    assert client.put("/suppressions/a@example.com").status_code == 401
