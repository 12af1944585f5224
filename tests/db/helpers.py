"""Databases for tests: throwaway PostgreSQL schemas and databases on the tests'
server (tests/postgres_server.py: a throwaway server of our own unless
TEST_POSTGRES_URL names one), and messages and settings for the outbox.

Plain functions rather than fixtures, so that every area shares one
implementation; tests/conftest.py wraps them in fixtures.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa

from service.config import Settings
from service.db import NewMessage, Outbox
from service.mailer import RenderedMessage
from tests import postgres_server

# The `outbox_factory` fixture: url, create=True, **settings overrides -> Outbox.
OutboxFactory = Callable[..., Outbox]


# -- PostgreSQL ------------------------------------------------------------------------


def admin_engine() -> sa.Engine:
    """The tests' server (started on first use), on its database `test`."""
    url = postgres_server.shared().url
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def wait_for_postgres(timeout: float = 30.0) -> None:
    """Block until the server accepts connections again (after a restart)."""
    deadline = time.monotonic() + timeout
    engine = admin_engine()
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


def restart_postgres() -> None:
    """Restart the tests' server: a fast shutdown (every session ended), then start again."""
    server = postgres_server.shared()
    if isinstance(server, postgres_server.ExistingServer):
        pytest.skip(
            f"{postgres_server.URL_VARIABLE} names a server the tests do not own: "
            "they do not restart it"
        )
    server.restart()


@contextmanager
def _created(create: str, drop: str) -> Iterator[None]:
    """Run `create` on the server, and `drop` after (once it answers again)."""
    admin = admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(create)
    except sa.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        pytest.fail(f"PostgreSQL at {admin.url!r} is not answering: {exc}")
    try:
        yield
    finally:
        wait_for_postgres()  # a test may have restarted the server
        with admin.connect() as conn:
            conn.exec_driver_sql(drop)
        admin.dispose()


@contextmanager
def throwaway_schema() -> Iterator[str]:
    """A fresh schema, first on the search_path of the URL yielded; dropped after."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with _created(f"CREATE SCHEMA {schema}", f"DROP SCHEMA {schema} CASCADE"):
        url = postgres_server.shared().url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh database, dropped after (its connections are ended first). For tests
    that start processes: every connection sees the same tables, whatever it does
    with its search_path."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _created(f"CREATE DATABASE {name}", f"DROP DATABASE {name} WITH (FORCE)"):
        url = postgres_server.shared().url.set(database=name)
        yield url.render_as_string(hide_password=False)


# -- the outbox's inputs ---------------------------------------------------------------


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
