"""Parts of service.app below the endpoints: the body-limit middleware on its own, the
injected sender factory, the idempotency race path, a sender that breaks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.exceptions import HTTPException, RequestValidationError

from service import db, mailer
from service.api.idempotency import IdempotencyKey, replay_after_race, request_hash
from service.api.middleware import BodySizeLimit
from service.api.offload import database_call, run_in_daemon_thread
from service.api.ratelimit import RateLimiter
from service.config import Settings
from service.models import SendRequest
from tests.pg import throwaway_schema

from .conftest import AUTH, MakeClient, MakeSettings, stored_rows

pytestmark = pytest.mark.unit

MESSAGE: dict[str, Any] = {"to": "ana@example.com", "subject": "Hi", "body": "text"}


def run_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Any]:
    """Drive an ASGI app with a request body in chunks; return what it sent."""
    sent: list[Any] = []
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Any:
        return pending.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent


async def reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body by itself (not through FastAPI), then answers 200."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_middleware_answers_413_itself_when_the_app_reads_past_the_limit() -> None:
    sent = run_asgi(BodySizeLimit(reading_app, limit=10), [], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "request body over 10 bytes"}


def test_middleware_lets_a_body_at_the_limit_through() -> None:
    sent = run_asgi(BodySizeLimit(reading_app, limit=12), [], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 200


def test_middleware_leaves_a_malformed_content_length_to_the_server() -> None:
    headers = [(b"content-length", b"nope")]
    sent = run_asgi(BodySizeLimit(reading_app, limit=12), headers, [b"x"])
    assert sent[0]["status"] == 200


def test_rate_limiter_refills_at_its_rate_up_to_the_burst() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("k") == 1
    now[0] += 10.0  # long idle: back to the burst, not more
    assert [limiter.acquire("k") for _ in range(4)] == [None, None, None, 1]


def test_request_hash_ignores_formatting_but_not_content_or_endpoint() -> None:
    one = SendRequest.model_validate({**MESSAGE, "to": "ana@example.com"})
    same = SendRequest.model_validate({**MESSAGE, "to": ["ana@example.com"]})
    other = SendRequest.model_validate({**MESSAGE, "subject": "other"})
    assert request_hash(one, "send") == request_hash(same, "send")
    assert request_hash(one, "send") != request_hash(other, "send")
    assert request_hash(one, "send") != request_hash(one, "send_async")


class CountingFactory:
    """Real SMTP connections, counted, to see the injected factory is what sends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: list[mailer.SMTPConnection] = []

    def __call__(self) -> Any:
        connection = mailer.SMTPConnection(self.settings)
        self.made.append(connection)
        return connection


def test_injected_sender_factory_serves_the_sync_path_and_is_reused(
    make_client: MakeClient, settings: Settings
) -> None:
    factory = CountingFactory(settings)
    client = make_client(settings, sender_factory=factory)
    for _ in range(3):
        assert client.post("/send", json=MESSAGE, headers=AUTH).status_code == 200
    assert len(factory.made) == 1


class BrokenSender:
    def send(self, message: mailer.RenderedMessage) -> mailer.SendResult:
        raise RuntimeError("a bug, not an SMTP failure")

    def close(self) -> None:
        pass


def test_a_bug_in_the_sender_answers_500_failed_and_is_recorded(
    make_client: MakeClient, settings: Settings, db_path: Path
) -> None:
    client = make_client(settings, sender_factory=BrokenSender)
    response = client.post("/send", json=MESSAGE, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["status"] == "failed"
    assert "RuntimeError" in response.json()["error"]
    [row] = stored_rows(db_path)
    assert row["status"] == "failed"


@pytest.fixture
def outbox(settings: Settings) -> Any:
    engine = db.make_engine(settings)
    box = db.Outbox(engine)
    box.create_schema()
    yield box
    engine.dispose()


def stored(outbox: db.Outbox, scope: str, code: int | None) -> str:
    request = SendRequest.model_validate(MESSAGE)
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


def test_losing_the_insert_race_replays_the_winner(outbox: db.Outbox, settings: Settings) -> None:
    hashed = stored(outbox, "fp:key", 202)
    response = asyncio.run(replay_after_race(outbox, IdempotencyKey("fp:key", hashed), settings))
    assert response.status_code == 202
    assert response.body == b'{"ok": true}'


def test_losing_the_race_to_a_request_in_progress_is_409(
    outbox: db.Outbox, settings: Settings
) -> None:
    hashed = stored(outbox, "fp:key", None)
    with pytest.raises(HTTPException) as info:
        asyncio.run(replay_after_race(outbox, IdempotencyKey("fp:key", hashed), settings))
    assert info.value.status_code == 409


def test_losing_the_race_with_another_body_is_422(outbox: db.Outbox, settings: Settings) -> None:
    stored(outbox, "fp:key", 202)
    with pytest.raises(RequestValidationError):
        asyncio.run(replay_after_race(outbox, IdempotencyKey("fp:key", "another-hash"), settings))


def test_race_on_a_key_purged_meanwhile_is_409(outbox: db.Outbox, settings: Settings) -> None:
    with pytest.raises(HTTPException) as info:
        asyncio.run(replay_after_race(outbox, IdempotencyKey("fp:gone", "hash"), settings))
    assert info.value.status_code == 409


def test_sync_send_into_a_database_that_is_gone_is_503(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    client = make_client(make_settings())
    assert client.post("/send", json=MESSAGE, headers=AUTH).status_code == 200
    moved = db_path.with_suffix(".moved")
    db_path.rename(moved)
    try:
        response = client.post("/send", json=MESSAGE, headers=AUTH)
    finally:
        moved.rename(db_path)
    assert response.status_code == 503
    assert len(stored_rows(db_path)) == 1


def test_smtp_work_of_requests_runs_in_daemon_threads_within_the_slot_limit() -> None:
    """No more threads at once than slots; each is a daemon (it cannot hold the exit)."""
    running = 0
    peak = 0
    daemons: list[bool] = []
    lock = threading.Lock()

    def blocking_send(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            daemons.append(threading.current_thread().daemon)
        time.sleep(0.05)
        with lock:
            running -= 1
        return n * 2

    async def main() -> list[int]:
        slots = asyncio.Semaphore(2)
        return await asyncio.gather(
            *(run_in_daemon_thread(slots, blocking_send, n) for n in range(6))
        )

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]
    assert peak == 2
    assert daemons == [True] * 6


def ran_on_the_event_loop(outbox: db.Outbox) -> bool:
    async def probe() -> bool:
        loop_thread = threading.current_thread()
        return await database_call(outbox, lambda: threading.current_thread() is loop_thread)

    return asyncio.run(probe())


def test_sqlite_calls_of_requests_run_on_the_event_loop(outbox: db.Outbox) -> None:
    """A local SQLite read is cheaper inline than a hop to a thread."""
    assert outbox.is_sqlite
    assert ran_on_the_event_loop(outbox) is True


@pytest.mark.postgres
def test_server_database_calls_of_requests_leave_the_event_loop() -> None:
    """A server database's round trips (its CONNECT_TIMEOUT when unreachable) must not
    stop every other request."""
    with throwaway_schema() as url:
        engine = db.make_engine(Settings(api_key=["k"], database_url=url))
        try:
            assert ran_on_the_event_loop(db.Outbox(engine)) is False
        finally:
            engine.dispose()
