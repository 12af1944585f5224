"""Webhooks end to end in one process: the app delivers through a real fakesmtp and
POSTs its events to a real HTTP receiver on 127.0.0.1, which checks the signatures
with the standardwebhooks library."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fakesmtp import FakeSMTPServer, FaultRule
from service.config import Settings
from tests.api.helpers import AUTH, MakeClient, MakeSettings
from tests.helpers import wait_until
from tests.webhooks.helpers import SECRET, WebhookReceiver

pytestmark = pytest.mark.unit


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.down()


@pytest.fixture
def hooked_settings(make_settings: MakeSettings, receiver: WebhookReceiver) -> Settings:
    return make_settings(
        webhook_url=receiver.url, webhook_secret=SECRET, webhook_retry_max=0.5, webhook_timeout=1.0
    )


def send(client: TestClient, n: int = 1, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        body = {"to": f"r{i}@example.com", "subject": f"s{i}", "body": "b", **fields}
        response = client.post("/send_async", json=body, headers=AUTH)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_sent_message_is_posted_signed_with_the_contracts_body(
    make_client: MakeClient, hooked_settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.up()
    client = make_client(hooked_settings)
    (record_id,) = send(client, tags=["receipt"], metadata={"order": "42"})
    wait_until(lambda: len(receiver.accepted()) == 1, what="message.sent")
    delivery = receiver.accepted()[0]
    payload = delivery.verified()
    assert payload["type"] == "message.sent"
    assert payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["id"], data["status"], data["to"], data["subject"]) == (
        record_id,
        "sent",
        ["r0@example.com"],
        "s0",
    )
    assert (data["tags"], data["metadata"], data["attempts"]) == (["receipt"], {"order": "42"}, 1)
    assert data["message_id"].startswith(f"<{record_id}@")
    assert delivery.id.startswith(f"evt_{record_id}_")
    assert delivery.headers["webhook-signature"].startswith("v1,")
    wait_until(
        lambda: metric(client, 'mail_webhook_events_total{outcome="delivered"}') == 1.0,
        what="counted",
    )
    assert metric(client, "mail_webhook_events_pending") == 0.0


def test_deferred_then_sent_are_two_events_of_one_message(
    make_client: MakeClient,
    make_settings: MakeSettings,
    receiver: WebhookReceiver,
    relay: FakeSMTPServer,
) -> None:
    receiver.up()
    relay.add_fault(FaultRule(stage="mail", code=451, message="4.3.0 later", times=1))
    client = make_client(
        make_settings(webhook_url=receiver.url, webhook_secret=SECRET, smtp_max_retries=2)
    )
    send(client)
    wait_until(lambda: len(receiver.accepted()) == 2, what="two events")
    payloads = sorted((d.verified() for d in receiver.accepted()), key=lambda p: p["timestamp"])
    assert [p["type"] for p in payloads] == ["message.deferred", "message.sent"]
    assert (payloads[0]["data"]["code"], payloads[0]["data"]["status"]) == (451, "queued")


def test_a_receiver_down_gets_the_whole_backlog_once_it_is_back_each_id_once(
    make_client: MakeClient,
    hooked_settings: Settings,
    receiver: WebhookReceiver,
    relay: FakeSMTPServer,
) -> None:
    client = make_client(hooked_settings)  # the receiver is down: nothing listens
    ids = send(client, 30)
    assert len(relay.wait_for_count(30)) == 30  # all delivered meanwhile
    wait_until(lambda: metric(client, "mail_webhook_events_pending") == 30.0, what="waiting")
    receiver.up()
    # WEBHOOK_RETRY_MAX is 0.5 s: within about that the backlog goes out.
    wait_until(lambda: len(receiver.accepted()) == 30, timeout=10, what="the backlog")
    accepted = receiver.accepted()
    assert len({d.id for d in accepted}) == 30
    assert {d.verified()["data"]["id"] for d in accepted} == set(ids)


def test_backoff_is_per_receiver_so_a_failing_one_is_probed_not_flooded(
    make_client: MakeClient,
    hooked_settings: Settings,
    receiver: WebhookReceiver,
    relay: FakeSMTPServer,
) -> None:
    receiver.mode = "fail"
    receiver.up()
    client = make_client(hooked_settings)
    send(client, 40)
    assert len(relay.wait_for_count(40)) == 40  # delivered
    wait_until(lambda: len(receiver.deliveries) >= 4, what="a few probes")
    failed_calls = len(receiver.deliveries)
    # Per event, 40 events would have made at least 40 calls by now.
    assert failed_calls < 40
    receiver.mode = "ok"
    wait_until(lambda: len(receiver.accepted()) == 40, timeout=10, what="all, once back")
    # A failed call is retried under the same webhook-id: duplicates only as retries.
    assert len({d.id for d in receiver.accepted()}) == 40


def test_one_event_the_receiver_keeps_refusing_does_not_hold_up_the_others(
    make_client: MakeClient, hooked_settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.refused_subject = "s0"
    receiver.up()
    client = make_client(hooked_settings)
    send(client, 12)  # subjects s0 (refused every time) to s11
    wait_until(lambda: len(receiver.accepted()) == 11, timeout=15, what="the other eleven")
    assert sum(1 for d in receiver.deliveries if d.answered == 400) >= 1
    assert "s0" not in {d.payload["data"]["subject"] for d in receiver.accepted()}


def test_a_hanging_receiver_is_cut_at_the_timeout_and_the_event_retried(
    make_client: MakeClient, hooked_settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.mode = "hang"
    receiver.up()
    client = make_client(hooked_settings)  # WEBHOOK_TIMEOUT 1 s
    send(client)
    wait_until(lambda: metric(client, 'mail_webhook_events_total{outcome="failed"}') >= 1)
    # The accept path does not wait for the receiver.
    send(client)
    receiver.mode = "ok"
    receiver.release()
    wait_until(lambda: len({d.id for d in receiver.accepted()}) == 2, timeout=10)


def test_a_receivers_huge_answer_is_not_read_whole(
    make_client: MakeClient, hooked_settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.mode = "big"
    receiver.up()
    client = make_client(hooked_settings)
    send(client, 3)
    wait_until(
        lambda: metric(client, 'mail_webhook_events_total{outcome="delivered"}') == 3.0,
        what="three 2xx answers counted",
    )


def test_a_cancelled_message_is_an_event_too(
    make_client: MakeClient, hooked_settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.up()
    client = make_client(hooked_settings)
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    (record_id,) = send(client, send_at=in_an_hour)
    assert client.post(f"/messages/{record_id}/cancel", headers=AUTH).status_code == 200
    wait_until(lambda: len(receiver.accepted()) == 1)
    payload = receiver.accepted()[0].verified()
    assert (payload["type"], payload["data"]["status"]) == ("message.cancelled", "cancelled")


def test_webhook_url_without_a_secret_is_a_configuration_error(
    make_settings: MakeSettings,
) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET is required"):
        make_settings(webhook_url="http://127.0.0.1:1/hooks")
    with pytest.raises(ValueError, match="whsec_"):
        make_settings(webhook_url="http://127.0.0.1:1/hooks", webhook_secret="plain")
