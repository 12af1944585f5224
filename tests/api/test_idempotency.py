"""Idempotency-Key: duplicates under concurrency against a real uvicorn make one message;
below the endpoints, the request hash and the path of a request that lost the insert race."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.exceptions import HTTPException, RequestValidationError

from fakesmtp import FakeSMTPServer, FaultRule
from service import db, mailer
from service.api.idempotency import IdempotencyKey, replay_after_race, request_hash
from service.app import create_app
from service.config import Settings
from service.models import SendRequest
from tests.api.helpers import AUTH, LiveServer, MakeSettings, stored_rows
from tests.helpers import wait_until

pytestmark = pytest.mark.unit

MESSAGE = {"to": "ana@example.com", "subject": "once", "body": "only one of me"}
REQUEST: dict[str, Any] = {"to": "ana@example.com", "subject": "Hi", "body": "text"}


@pytest.fixture
def server(make_settings: MakeSettings, live_server: Callable[[FastAPI], LiveServer]) -> LiveServer:
    return live_server(create_app(make_settings()))


def post_together(url: str, path: str, headers: dict[str, str], count: int) -> list[httpx.Response]:
    barrier = threading.Barrier(count)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:
            barrier.wait()
            return client.post(path, json=MESSAGE, headers=headers)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def test_concurrent_async_duplicates_store_and_send_one_message(
    server: LiveServer, relay: FakeSMTPServer, db_path: Path
) -> None:
    responses = post_together(server.url, "/send_async", {**AUTH, "Idempotency-Key": "dup"}, 8)
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    relay.wait_for(1)
    assert len(stored_rows(db_path)) == 1
    assert len(relay.messages()) == 1


def test_concurrent_sync_duplicates_send_once_and_others_get_409_or_the_replay(
    server: LiveServer, relay: FakeSMTPServer, db_path: Path
) -> None:
    # A slow relay keeps the first send in progress while the others arrive.
    relay.add_fault(FaultRule(stage="data", action="delay", delay=0.5, times=1))
    responses = post_together(server.url, "/send", {**AUTH, "Idempotency-Key": "dup-sync"}, 6)
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1
    assert set(codes) <= {200, 409}
    sent_ids = {r.json()["id"] for r in responses if r.status_code == 200}
    assert len(sent_ids) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert "in progress" in conflict.json()["detail"]
    assert len(stored_rows(db_path)) == 1
    assert len(relay.messages()) == 1


def test_repeat_while_the_first_sync_send_is_in_progress_is_409(
    server: LiveServer, relay: FakeSMTPServer
) -> None:
    rule = relay.add_fault(FaultRule(stage="data", action="delay", delay=1.0, times=1))
    headers = {**AUTH, "Idempotency-Key": "slow"}
    with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/send", json=MESSAGE, headers=headers)
        # Once the relay is holding the DATA command, the first request is mid-send.
        wait_until(lambda: (relay.fault(rule) or {"fired": 1})["fired"] >= 1)
        conflict = client.post("/send", json=MESSAGE, headers=headers)
        assert conflict.status_code == 409
        assert first.result().status_code == 200
        replay = client.post("/send", json=MESSAGE, headers=headers)
        assert replay.status_code == 200
        assert replay.json() == first.result().json()


# -- below the endpoints -----------------------------------------------------------------


def test_request_hash_ignores_formatting_but_not_content_or_endpoint() -> None:
    one = SendRequest.model_validate({**REQUEST, "to": "ana@example.com"})
    same = SendRequest.model_validate({**REQUEST, "to": ["ana@example.com"]})
    other = SendRequest.model_validate({**REQUEST, "subject": "other"})
    assert request_hash(one, "send") == request_hash(same, "send")
    assert request_hash(one, "send") != request_hash(other, "send")
    assert request_hash(one, "send") != request_hash(one, "send_async")


def stored(outbox: db.Outbox, scope: str, code: int | None) -> str:
    """Store an idempotent async request under `scope`, answered `code` (None: in progress)."""
    request = SendRequest.model_validate(REQUEST)
    rendered = mailer.render_message(request, default_from="app@example.com")
    hashed = request_hash(request, "send_async")
    outbox.insert(
        db.NewMessage(
            id="a" * 32,
            mode="async",
            rendered=rendered,
            to=request.to,
            subject=request.subject,
            idempotency_scope=scope,
            request_hash=hashed,
            response_code=code,
            response_body=None if code is None else '{"ok": true}',
        )
    )
    return hashed


def test_losing_the_insert_race_replays_the_winner(
    app_outbox: db.Outbox, settings: Settings
) -> None:
    hashed = stored(app_outbox, "fp:key", 202)
    response = asyncio.run(
        replay_after_race(app_outbox, IdempotencyKey("fp:key", hashed), settings)
    )
    assert response.status_code == 202
    assert response.body == b'{"ok": true}'


def test_losing_the_race_to_a_request_in_progress_is_409(
    app_outbox: db.Outbox, settings: Settings
) -> None:
    hashed = stored(app_outbox, "fp:key", None)
    with pytest.raises(HTTPException) as info:
        asyncio.run(replay_after_race(app_outbox, IdempotencyKey("fp:key", hashed), settings))
    assert info.value.status_code == 409


def test_losing_the_race_with_another_body_is_422(
    app_outbox: db.Outbox, settings: Settings
) -> None:
    stored(app_outbox, "fp:key", 202)
    with pytest.raises(RequestValidationError):
        asyncio.run(
            replay_after_race(app_outbox, IdempotencyKey("fp:key", "another-hash"), settings)
        )


def test_race_on_a_key_purged_meanwhile_is_409(app_outbox: db.Outbox, settings: Settings) -> None:
    with pytest.raises(HTTPException) as info:
        asyncio.run(replay_after_race(app_outbox, IdempotencyKey("fp:gone", "hash"), settings))
    assert info.value.status_code == 409
