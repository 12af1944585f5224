"""Group commit: concurrent accepts share a transaction; each answer follows its own commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from service.db import (
    DatabaseUnavailable,
    IdempotencyKeyTaken,
    NewMessage,
    Outbox,
    messages_table,
)
from service.group_commit import GroupCommitter

from .conftest import new_message

pytestmark = pytest.mark.unit


def stored_ids(outbox: Outbox) -> set[str]:
    with outbox.engine.connect() as conn:
        return set(conn.execute(sa.select(messages_table.c.id)).scalars())


def test_insert_many_stores_every_row_in_one_call(outbox: Outbox) -> None:
    messages = [new_message("async") for _ in range(20)]
    assert outbox.insert_many(messages) == [None] * 20
    assert stored_ids(outbox) == {m.id for m in messages}


def test_insert_many_isolates_a_taken_idempotency_key(outbox: Outbox) -> None:
    """One duplicate key fails that row only; the rest of the batch is stored."""
    outbox.insert(new_message("async", scope="fp:dup"))
    batch = [new_message("async"), new_message("async", scope="fp:dup"), new_message("async")]
    results = outbox.insert_many(batch)
    assert results[0] is None
    assert isinstance(results[1], IdempotencyKeyTaken)
    assert results[2] is None
    assert {batch[0].id, batch[2].id} <= stored_ids(outbox)
    assert batch[1].id not in stored_ids(outbox)


def test_insert_many_reports_an_unwritable_database_for_every_row(outbox: Outbox) -> None:
    with outbox.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE attempts"))
        conn.execute(sa.text("DROP TABLE messages"))
    results = outbox.insert_many([new_message("async"), new_message("async")])
    assert all(isinstance(r, DatabaseUnavailable) for r in results)


def test_concurrent_inserts_are_batched_and_each_answered_after_its_commit(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 concurrent inserts: all stored, fewer transactions than rows, on_commit once each."""
    committer = GroupCommitter(outbox)
    batches: list[int] = []
    original = outbox.insert_many

    def counting_insert_many(messages: Sequence[NewMessage]) -> list[Exception | None]:
        batches.append(len(messages))
        return original(messages)

    monkeypatch.setattr(outbox, "insert_many", counting_insert_many)
    committed: list[str] = []
    messages = [new_message("async") for _ in range(200)]

    async def one(message: NewMessage) -> None:
        await committer.insert(message, on_commit=lambda: committed.append(message.id))
        # The answer comes only once the row is readable by anyone.
        assert message.id in stored_ids(outbox)

    async def accept_all() -> None:
        await asyncio.gather(*(one(m) for m in messages))

    committer.start()
    try:
        asyncio.run(accept_all())
    finally:
        committer.stop()
    assert sorted(committed) == sorted(m.id for m in messages)
    assert sum(batches) == 200
    assert len(batches) < 200  # requests waiting together shared transactions


def test_a_failed_insert_raises_in_its_request_and_skips_on_commit(outbox: Outbox) -> None:
    outbox.insert(new_message("async", scope="fp:taken"))
    committer = GroupCommitter(outbox)
    called: list[bool] = []

    async def accept() -> None:
        await committer.insert(
            new_message("async", scope="fp:taken"), on_commit=lambda: called.append(True)
        )

    committer.start()
    try:
        with pytest.raises(IdempotencyKeyTaken):
            asyncio.run(accept())
    finally:
        committer.stop()
    assert called == []


def test_stop_commits_what_is_already_waiting(outbox: Outbox) -> None:
    """Inserts queued before stop() are committed, not dropped."""
    committer = GroupCommitter(outbox)
    messages = [new_message("async") for _ in range(5)]

    async def enqueue_then_stop() -> None:
        tasks = [asyncio.ensure_future(committer.insert(m)) for m in messages]
        await asyncio.sleep(0)  # every insert is in the writer's queue
        committer.start()
        await asyncio.to_thread(committer.stop)
        await asyncio.gather(*tasks)

    asyncio.run(enqueue_then_stop())
    assert stored_ids(outbox) == {m.id for m in messages}
