"""Records of a key's messages: ownership by key name, tags and metadata, the timeline,
GET /messages with filters and cursors, cancel, and send_at.

The app runs with its lifespan on a real SQLite file, delivering to a real fakesmtp.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from service import db
from service.config import Settings
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows, wait_status
from tests.helpers import wait_until

pytestmark = pytest.mark.unit

BILLING_OLD = "billing-secret-0000000000000001"
BILLING_NEW = "billing-secret-0000000000000002"
SUPPORT = "support-secret-00000000000000003"
OLD = {"X-API-Key": BILLING_OLD}
NEW = {"X-API-Key": BILLING_NEW}
OTHER = {"X-API-Key": SUPPORT}


def message(**fields: Any) -> dict[str, Any]:
    return {"to": "ana@example.com", "subject": "Hello", "body": "text", **fields}


@pytest.fixture
def named(make_client: MakeClient, make_settings: MakeSettings) -> TestClient:
    """Two key names; `billing` has two secrets (a rotation in progress)."""
    keys = f"billing={BILLING_OLD},billing={BILLING_NEW},support={SUPPORT}"
    return make_client(make_settings(api_key=keys))


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# -- ownership ---------------------------------------------------------------------------


def test_another_key_name_gets_404_for_read_list_and_cancel(named: TestClient) -> None:
    made = named.post("/send_async", json=message(send_at=later(600)), headers=OLD).json()
    path = f"/messages/{made['id']}"
    assert named.get(path, headers=OTHER).status_code == 404
    assert named.get(path, headers=OTHER).json() == {
        "detail": "no message with this id: use the id a send answered, with the API key "
        "(or a key of the same name) that sent it"
    }
    assert named.post(f"{path}/cancel", headers=OTHER).status_code == 404
    assert named.get("/messages", headers=OTHER).json() == {"messages": [], "next_cursor": None}
    assert named.get(path, headers=OLD).json()["status"] == "scheduled"  # untouched


def test_rotation_under_one_name_sees_the_same_records(named: TestClient) -> None:
    """Nothing is hidden when the old secret goes: the new one reads, lists and cancels."""
    made = named.post("/send_async", json=message(send_at=later(600)), headers=OLD).json()
    assert named.get(f"/messages/{made['id']}", headers=NEW).status_code == 200
    listed = named.get("/messages", headers=NEW).json()["messages"]
    assert [m["id"] for m in listed] == [made["id"]]
    assert named.post(f"/messages/{made['id']}/cancel", headers=NEW).status_code == 200


def test_idempotency_key_belongs_to_the_key_name(named: TestClient) -> None:
    """A retry with the rotated secret is the same request, not a second message."""
    first = named.post("/send_async", json=message(), headers={**OLD, "Idempotency-Key": "k"})
    again = named.post("/send_async", json=message(), headers={**NEW, "Idempotency-Key": "k"})
    other = named.post("/send_async", json=message(), headers={**OTHER, "Idempotency-Key": "k"})
    assert again.json() == first.json()
    assert other.json()["id"] != first.json()["id"]


def test_records_store_the_key_name_never_the_secret(named: TestClient, db_path: Path) -> None:
    named.post("/send_async", json=message(), headers=OLD)
    [row] = stored_rows(db_path)
    assert row["key_name"] == "billing"
    assert BILLING_OLD not in repr(row)


# -- tags and metadata -------------------------------------------------------------------


def test_tags_and_metadata_are_stored_returned_and_not_in_the_message(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    sent = client.post(
        "/send_async",
        json=message(tags=["receipt", "eu.west-1"], metadata={"order": "A-1", "note": ""}),
        headers=AUTH,
    ).json()
    record = wait_status(client, sent["id"], "sent")
    assert record["tags"] == ["receipt", "eu.west-1"]
    assert record["metadata"] == {"order": "A-1", "note": ""}
    [captured] = relay.messages()
    assert b"A-1" not in captured.raw
    assert b"receipt" not in captured.raw


def test_a_tag_given_twice_is_kept_once(client: TestClient) -> None:
    made = client.post("/send_async", json=message(tags=["a", "b", "a"]), headers=AUTH)
    assert made.status_code == 202, made.text
    record = client.get(f"/messages/{made.json()['id']}", headers=AUTH).json()
    assert record["tags"] == ["a", "b"]
    listed = client.get("/messages", params={"tag": "a"}, headers=AUTH).json()["messages"]
    assert [m["id"] for m in listed] == [made.json()["id"]]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"tags": ["ok", "has space"]}, ["body", "tags", 1]),
        ({"tags": ["x" * 65]}, ["body", "tags", 0]),
        ({"tags": [""]}, ["body", "tags", 0]),
        ({"tags": [f"t{n}" for n in range(11)]}, ["body", "tags"]),
        ({"metadata": {"k": "v" * 513}}, ["body", "metadata", "k"]),
        ({"metadata": {"": "v"}}, ["body", "metadata", ""]),
        ({"metadata": {"k" * 65: "v"}}, ["body", "metadata", "k" * 65]),
        ({"metadata": {f"k{n}": "v" for n in range(21)}}, ["body", "metadata"]),
        ({"metadata": {"k": 1}}, ["body", "metadata", "k"]),
    ],
)
def test_bad_tags_or_metadata_are_422_naming_the_item_and_store_nothing(
    client: TestClient, db_path: Path, fields: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post("/send_async", json=message(**fields), headers=AUTH)
    assert response.status_code == 422, response.text
    assert any(item["loc"][: len(loc)] == loc for item in response.json()["detail"])
    assert stored_rows(db_path) == []


# -- the timeline ------------------------------------------------------------------------


def test_timeline_of_a_delivery_after_a_deferral(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer
) -> None:
    relay.add_fault(
        FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 later", times=1)
    )
    client = make_client(make_settings(smtp_max_retries=2))
    made = client.post("/send_async", json=message(), headers=AUTH).json()
    record = wait_status(client, made["id"], "sent")
    events = record["events"]
    assert [e["type"] for e in events] == ["message.queued", "message.deferred", "message.sent"]
    assert events[1]["code"] == 451
    assert "4.3.0 later" in events[1]["detail"]
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)


def test_timeline_of_a_permanent_failure(client: TestClient, relay: FakeSMTPServer) -> None:
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 unknown"))
    made = client.post("/send_async", json=message(), headers=AUTH).json()
    record = wait_status(client, made["id"], "failed")
    assert [(e["type"], e["code"]) for e in record["events"]] == [
        ("message.queued", None),
        ("message.failed", 550),
    ]


# -- GET /messages -----------------------------------------------------------------------


def all_pages(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get("/messages", params=query, headers=AUTH)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["messages"]) <= params.get("limit", 50)
        seen.extend(body["messages"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def test_list_pages_through_every_message_newest_first(client: TestClient) -> None:
    ids = [
        client.post("/send_async", json=message(send_at=later(600)), headers=AUTH).json()["id"]
        for _ in range(23)
    ]
    listed = all_pages(client, limit=5)
    assert [m["id"] for m in listed] == ids[::-1]
    first = client.get("/messages", params={"limit": 5}, headers=AUTH).json()
    assert len(first["messages"]) == 5
    assert first["next_cursor"] is not None
    assert client.get("/messages", headers=AUTH).json()["next_cursor"] is None  # 23 <= 50


def test_list_filters_by_status_tag_recipient_and_since(client: TestClient) -> None:
    def send(**fields: Any) -> str:
        made = client.post("/send_async", json=message(**fields), headers=AUTH)
        assert made.status_code == 202, made.text
        return str(made.json()["id"])

    early = send(to="old@example.com", send_at=later(600))
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    time.sleep(0.01)
    tagged = send(tags=["invoice"], send_at=later(600))
    bcc = send(to="x@example.com", bcc=["Audit_Team@Example.com"], send_at=later(600))
    now = send(to="x@example.com")
    wait_status(client, now, "sent")

    def ids(**params: Any) -> list[str]:
        return [m["id"] for m in all_pages(client, **params)]

    assert ids(status="sent") == [now]
    assert ids(status="scheduled") == [bcc, tagged, early]
    assert ids(tag="invoice") == [tagged]
    assert ids(tag="invoice", status="sent") == []
    assert ids(to="audit_team@example.com") == [bcc]  # bcc too, any case
    assert ids(to="Old <old@example.com>") == [early]
    assert ids(to="a%@example.com") == []  # % is a character here, not a wildcard
    assert ids(since=cutoff.isoformat()) == [now, bcc, tagged]
    assert ids(since=cutoff.isoformat(), limit=1) == [now, bcc, tagged]


def test_cursor_neither_skips_nor_repeats_under_concurrent_inserts(client: TestClient) -> None:
    before = [
        client.post("/send_async", json=message(send_at=later(600)), headers=AUTH).json()["id"]
        for _ in range(30)
    ]
    stop = threading.Event()

    def keep_inserting() -> None:
        while not stop.is_set():
            client.post("/send_async", json=message(send_at=later(600)), headers=AUTH)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        first = client.get("/messages", params={"limit": 4}, headers=AUTH).json()
        seen = [m["id"] for m in first["messages"]]
        cursor = first["next_cursor"]
        while cursor is not None:
            page = client.get("/messages", params={"limit": 4, "cursor": cursor}, headers=AUTH)
            seen.extend(m["id"] for m in page.json()["messages"])
            cursor = page.json()["next_cursor"]
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(before) <= set(seen)  # nothing that was there skipped
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 101}, ["query", "limit"]),
        ({"status": "lost"}, ["query", "status"]),
        ({"tag": "has space"}, ["query", "tag"]),
        ({"to": "not an address"}, ["query", "to"]),
        ({"since": "yesterday"}, ["query", "since"]),
        ({"since": "2026-12-01T10:00:00"}, ["query", "since"]),
        ({"cursor": "!!!"}, ["query", "cursor"]),
    ],
)
def test_bad_list_parameters_are_422_naming_them(
    client: TestClient, params: dict[str, Any], loc: list[str]
) -> None:
    response = client.get("/messages", params=params, headers=AUTH)
    assert response.status_code == 422, response.text
    assert [item["loc"] for item in response.json()["detail"]] == [loc]


def test_a_cursor_with_other_filters_is_422(client: TestClient) -> None:
    for _ in range(3):
        client.post("/send_async", json=message(send_at=later(600)), headers=AUTH)
    cursor = client.get("/messages", params={"limit": 1}, headers=AUTH).json()["next_cursor"]
    response = client.get(
        "/messages", params={"limit": 1, "cursor": cursor, "status": "queued"}, headers=AUTH
    )
    assert response.status_code == 422
    assert "other filters" in response.json()["detail"][0]["msg"]


def test_list_without_a_key_is_401_even_with_bad_parameters(client: TestClient) -> None:
    assert client.get("/messages").status_code == 401
    assert client.get("/messages", params={"limit": 0}).status_code == 401


# -- cancel ------------------------------------------------------------------------------


def test_cancel_a_queued_message_waiting_for_its_retry(
    make_client: MakeClient, make_settings: MakeSettings, relay: FakeSMTPServer
) -> None:
    relay.add_fault(FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 later"))
    client = make_client(
        make_settings(smtp_max_retries=3, smtp_backoff_base=60.0, smtp_backoff_max=60.0)
    )
    made = client.post("/send_async", json=message(), headers=AUTH).json()

    def waiting_for_retry() -> bool:
        record = client.get(f"/messages/{made['id']}", headers=AUTH).json()
        return bool(record["attempts"] == 1 and record["status"] == "queued")

    wait_until(waiting_for_retry, what="the first attempt deferred")
    cancelled = client.post(f"/messages/{made['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200, cancelled.text
    record = cancelled.json()
    assert record["status"] == "cancelled"
    assert [e["type"] for e in record["events"]] == [
        "message.queued",
        "message.deferred",
        "message.cancelled",
    ], record
    again = client.post(f"/messages/{made['id']}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert again.json()["detail"] == "the message is already cancelled"


def test_cancel_a_sent_message_is_409_saying_its_status(client: TestClient) -> None:
    made = client.post("/send_async", json=message(), headers=AUTH).json()
    wait_status(client, made["id"], "sent")
    response = client.post(f"/messages/{made['id']}/cancel", headers=AUTH)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("the message is sent:")


def test_cancel_unknown_id_is_404(client: TestClient) -> None:
    assert client.post("/messages/nope/cancel", headers=AUTH).status_code == 404


def test_cancel_loses_to_a_claim_made_first(app_outbox: db.Outbox, client: TestClient) -> None:
    """The claim and the cancel are each one conditional statement: whichever comes
    second finds the other's status and changes nothing."""
    made = client.post("/send_async", json=message(send_at=later(600)), headers=AUTH).json()
    with app_outbox.engine.begin() as conn:  # due now, as if its time had come
        conn.execute(
            db.messages_table.update()
            .where(db.messages_table.c.id == made["id"])
            .values(status="queued", next_attempt_at=0.0)
        )
    claimed = app_outbox.claim([made["id"]], "someone", 60.0)
    assert [c.id for c in claimed] == [made["id"]]
    response = client.post(f"/messages/{made['id']}/cancel", headers=AUTH)
    assert response.status_code == 409
    assert "sending" in response.json()["detail"]
    # And the other order: a cancelled message is never claimed.
    second = client.post("/send_async", json=message(send_at=later(600)), headers=AUTH).json()
    assert client.post(f"/messages/{second['id']}/cancel", headers=AUTH).status_code == 200
    assert app_outbox.claim([second["id"]], "someone", 60.0) == []


# -- send_at -----------------------------------------------------------------------------


def test_scheduled_message_waits_then_is_sent_on_time(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    made = client.post("/send_async", json=message(send_at=due.isoformat()), headers=AUTH)
    assert made.status_code == 202, made.text
    assert made.json()["status"] == "scheduled"
    record = client.get(f"/messages/{made.json()['id']}", headers=AUTH).json()
    assert record["status"] == "scheduled"
    assert datetime.fromisoformat(record["send_at"]) == due.replace(
        microsecond=due.microsecond // 1000 * 1000
    )
    assert relay.messages() == []
    record = wait_status(client, made.json()["id"], "sent")
    sent_at = datetime.fromisoformat(record["sent_at"])
    assert due <= sent_at + timedelta(milliseconds=1)
    assert sent_at - due < timedelta(seconds=1)  # due on time to within a second
    assert [e["type"] for e in record["events"]] == [
        "message.scheduled",
        "message.queued",
        "message.sent",
    ]


def test_send_at_in_the_past_means_now(client: TestClient) -> None:
    made = client.post("/send_async", json=message(send_at=later(-3600)), headers=AUTH)
    assert made.json()["status"] == "queued"
    wait_status(client, made.json()["id"], "sent")


def test_scheduled_messages_do_not_count_toward_queue_maxsize(
    make_client: MakeClient, make_settings: MakeSettings
) -> None:
    client = make_client(make_settings(queue_maxsize=2))
    for _ in range(5):
        made = client.post("/send_async", json=message(send_at=later(600)), headers=AUTH)
        assert made.status_code == 202


@pytest.mark.parametrize(
    ("send_at", "words"),
    [
        (later(31 * 24 * 3600), "more than 30 days ahead"),
        ("2026-12-24T09:00:00", "timezone"),
        ("tomorrow", "datetime"),
    ],
)
def test_bad_send_at_is_422(client: TestClient, db_path: Path, send_at: str, words: str) -> None:
    response = client.post("/send_async", json=message(send_at=send_at), headers=AUTH)
    assert response.status_code == 422, response.text
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "send_at"]
    assert words in item["msg"]
    assert stored_rows(db_path) == []


def test_send_cannot_schedule(client: TestClient, relay: FakeSMTPServer, db_path: Path) -> None:
    response = client.post("/send", json=message(send_at=later(60)), headers=AUTH)
    assert response.status_code == 422
    assert "/send_async" in response.json()["detail"][0]["msg"]
    assert relay.messages() == []
    assert stored_rows(db_path) == []


def test_scheduled_message_survives_a_restart(
    make_client: MakeClient, make_settings: MakeSettings, settings: Settings
) -> None:
    """Nothing of it is in memory: a new app on the same database sends it when due."""
    first = make_client(make_settings())
    made = first.post("/send_async", json=message(send_at=later(1.0)), headers=AUTH).json()
    first.__exit__(None, None, None)  # the lifespan ends: workers stop
    second = make_client(make_settings())
    wait_status(second, made["id"], "sent")
