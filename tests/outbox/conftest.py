"""Fixtures for the outbox and the worker: real SQLite files, an injectable clock,
and (for PostgreSQL) a throwaway schema per test."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.config import Settings
from service.db import NewMessage, Outbox, make_engine
from service.mailer import RenderedMessage
from tests.pg import throwaway_schema


class FakeClock:
    """A wall clock that moves only when told to (shared by the outbox and the worker)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"api_key": ["test-key"], "database_url": database_url}
    values.update(overrides)
    return Settings(**values)


def render(recipient: str = "rcpt@example.com", subject: str = "hello") -> RenderedMessage:
    """A small message built with the standard library, independent of the mailer."""
    message_id = f"<{uuid.uuid4().hex}@test.example>"
    email = EmailMessage()
    email["From"] = "sender@example.com"
    email["To"] = recipient
    email["Subject"] = subject
    email["Message-ID"] = message_id
    email.set_content("body\n")
    return RenderedMessage(
        message_id=message_id,
        mail_from="sender@example.com",
        rcpt_tos=[recipient],
        data=email.as_bytes().replace(b"\n", b"\r\n"),
    )


def new_message(
    mode: str = "async",
    *,
    recipient: str = "rcpt@example.com",
    subject: str = "hello",
    scope: str | None = None,
) -> NewMessage:
    return NewMessage(
        id=uuid.uuid4().hex,
        mode=mode,  # type: ignore[arg-type]
        rendered=render(recipient, subject),
        to=[recipient],
        subject=subject,
        idempotency_scope=scope,
        request_hash="hash-1" if scope else None,
        response_code=202 if scope and mode == "async" else None,
        response_body='{"ok": true}' if scope and mode == "async" else None,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the local PostgreSQL, first on the search_path, dropped after."""
    with throwaway_schema() as url:
        yield url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Behaviour tests run against both databases."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    return url


OutboxFactory = Callable[..., Outbox]


@pytest.fixture
def outbox_factory(clock: FakeClock) -> Iterator[OutboxFactory]:
    """Build outboxes (each with its own engine) on a URL; disposes them at teardown."""
    engines: list[sa.Engine] = []

    def factory(url: str, *, create: bool = True, **overrides: Any) -> Outbox:
        engine = make_engine(make_settings(url, **overrides))
        engines.append(engine)
        outbox = Outbox(engine, clock=clock, lease_seconds=30.0)
        if create:
            outbox.create_schema()
        return outbox

    try:
        yield factory
    finally:
        for engine in engines:
            engine.dispose()


@pytest.fixture
def outbox(outbox_factory: OutboxFactory, database_url: str) -> Outbox:
    return outbox_factory(database_url)
