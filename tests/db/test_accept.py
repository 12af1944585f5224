"""Outbox.insert on the bare DBAPI connection: every column as written, and its errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.db import DatabaseUnavailable, Outbox, messages_table
from service.types import AttachmentInfo
from tests.db.helpers import OutboxFactory, new_message
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


def row(outbox: Outbox, id: str) -> dict[str, object]:
    with outbox.engine.connect() as conn:
        found = conn.execute(sa.select(messages_table).where(messages_table.c.id == id)).one()
    return dict(found._mapping)


def test_insert_writes_every_column_of_async_and_sync_rows(
    outbox: Outbox, clock: FakeClock
) -> None:
    """Each value lands in its own column (the statement is positional on SQLite)."""
    async_message = new_message("async", recipient="a@example.com", subject="one", scope="fp:k")
    async_message = dataclasses.replace(
        async_message,
        rendered=dataclasses.replace(async_message.rendered, smtputf8=True),
        key_name="billing",
        tags=["t1", "t2"],
        metadata={"order": "A-1"},
        attachments=[AttachmentInfo("a.pdf", "application/pdf", 12)],
    )
    sync_message = new_message("sync", recipient="b@example.com", subject="two")
    outbox.insert(async_message)
    outbox.insert(sync_message)
    now = clock()

    stored = row(outbox, async_message.id)
    assert stored == {
        "id": async_message.id,
        "mode": "async",
        "status": "queued",
        "mail_from": "sender@example.com",
        "rcpt_tos": '["a@example.com"]',
        "to_addrs": '["a@example.com"]',
        "subject": "one",
        "message_id": async_message.rendered.message_id,
        "smtputf8": True,
        "raw": async_message.rendered.data,
        "attempts": 0,
        "last_error": None,
        "last_code": None,
        "rejected": None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
        "next_attempt_at": now,
        "lease_until": None,
        "owner": None,
        "idempotency_scope": "fp:k",
        "request_hash": "hash-1",
        "response_code": 202,
        "response_body": '{"ok": true}',
        "key_name": "billing",
        "tags": '["t1", "t2"]',
        "meta": '{"order": "A-1"}',
        "send_at": None,
        "attachments": '[{"filename": "a.pdf", "content_type": "application/pdf", "size": 12, '
        '"content_id": null}]',
    }
    stored = row(outbox, sync_message.id)
    assert (stored["mode"], stored["status"], stored["smtputf8"]) == ("sync", "sending", False)
    assert (stored["next_attempt_at"], stored["lease_until"]) == (None, now + 30.0)
    assert (stored["idempotency_scope"], stored["response_code"]) == (None, None)
    [claimed] = outbox.claim([async_message.id], "owner", 30)
    assert claimed.rendered == async_message.rendered


def test_a_duplicate_id_is_an_integrity_error_and_the_pool_stays_usable(outbox: Outbox) -> None:
    """Not an idempotency race: a plain IntegrityError; the failed transaction is rolled
    back, so the connection goes back to the pool clean."""
    message = new_message()
    outbox.insert(message)
    with pytest.raises(sa.exc.IntegrityError):
        outbox.insert(dataclasses.replace(new_message(), id=message.id))
    for _ in range(12):  # more than the pool holds: every connection is clean
        outbox.insert(new_message())
    assert outbox.count_unfinished() == 13


def test_insert_with_every_pooled_connection_busy_is_unavailable(tmp_path: Path) -> None:
    """A pool timeout is a 503 (DatabaseUnavailable), not an unexpected error."""
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    engine = sa.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    try:
        outbox = Outbox(engine)
        outbox.create_schema()
        with engine.connect(), pytest.raises(DatabaseUnavailable, match="busy"):
            outbox.insert(new_message())
        outbox.insert(new_message())
        assert outbox.count_unfinished() == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_the_server_killed_is_dropped_not_reused(
    pg_url: str, outbox_factory: OutboxFactory
) -> None:
    """Without pre-ping, the first insert on a dead connection fails (503) and the
    connection is invalidated, so the next insert gets a new one."""
    engine = sa.create_engine(pg_url, pool_size=1, max_overflow=0)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        outbox_factory(pg_url)  # creates the schema
        outbox = Outbox(engine)
        outbox.insert(new_message())
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(DatabaseUnavailable):
            outbox.insert(new_message())
        outbox.insert(new_message())
        assert outbox.count_unfinished() == 2
    finally:
        engine.dispose()
        admin.dispose()
