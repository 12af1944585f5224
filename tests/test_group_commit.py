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
from service.group_commit import Committer, LoopCommitter, ThreadCommitter, make_committer
from tests.db.helpers import new_message

pytestmark = pytest.mark.unit


CommitterClass = type[LoopCommitter] | type[ThreadCommitter]


@pytest.fixture(params=[LoopCommitter, ThreadCommitter])
def committer_class(request: pytest.FixtureRequest) -> CommitterClass:
    """Both committers keep the same promises, on either database."""
    cls: CommitterClass = request.param
    return cls


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
        conn.execute(sa.text("DROP TABLE message_tags"))
        conn.execute(sa.text("DROP TABLE events"))
        conn.execute(sa.text("DROP TABLE messages"))
    results = outbox.insert_many([new_message("async"), new_message("async")])
    assert all(isinstance(r, DatabaseUnavailable) for r in results)


def test_concurrent_inserts_are_batched_and_each_answered_after_its_commit(
    outbox: Outbox, committer_class: CommitterClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 concurrent inserts: all stored, fewer transactions than rows, on_commit once each."""
    committer = committer_class(outbox)
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
        committer.start()
        try:
            await asyncio.gather(*(one(m) for m in messages))
        finally:
            await committer.stop()

    asyncio.run(accept_all())
    assert sorted(committed) == sorted(m.id for m in messages)
    assert sum(batches) == 200
    assert len(batches) < 200  # requests waiting together shared transactions
    assert max(batches) <= 128  # MAX_BATCH: one transaction stays short


def test_a_failed_insert_raises_in_its_request_and_skips_on_commit(
    outbox: Outbox, committer_class: CommitterClass
) -> None:
    outbox.insert(new_message("async", scope="fp:taken"))
    committer = committer_class(outbox)
    called: list[bool] = []

    async def accept() -> None:
        committer.start()
        try:
            await committer.insert(
                new_message("async", scope="fp:taken"), on_commit=lambda: called.append(True)
            )
        finally:
            await committer.stop()

    with pytest.raises(IdempotencyKeyTaken):
        asyncio.run(accept())
    assert called == []


def test_a_failing_on_commit_fails_only_its_own_request(
    outbox: Outbox, committer_class: CommitterClass
) -> None:
    committer = committer_class(outbox)
    good, bad = new_message("async"), new_message("async")

    def broken() -> None:
        raise RuntimeError("on_commit bug")

    async def accept() -> list[object]:
        committer.start()
        try:
            return await asyncio.gather(
                committer.insert(bad, on_commit=broken),
                committer.insert(good),
                return_exceptions=True,
            )
        finally:
            await committer.stop()

    results = asyncio.run(accept())
    assert isinstance(results[0], RuntimeError)
    assert results[1] is None
    assert stored_ids(outbox) == {good.id, bad.id}  # the row itself was committed


def test_a_cancelled_request_is_still_committed_and_handed_on(
    outbox: Outbox, committer_class: CommitterClass
) -> None:
    """A client that goes away while waiting: its row is committed and on_commit runs,
    so a stored message always reaches the delivery queue."""
    committer = committer_class(outbox)
    message = new_message("async")
    handed: list[str] = []

    async def accept_then_cancel() -> None:
        committer.start()
        try:
            task = asyncio.ensure_future(
                committer.insert(message, on_commit=lambda: handed.append(message.id))
            )
            await asyncio.sleep(0)  # the insert is waiting for its batch
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await committer.stop()

    asyncio.run(accept_then_cancel())
    assert handed == [message.id]
    assert stored_ids(outbox) == {message.id}


def test_stop_commits_what_is_already_waiting(
    outbox: Outbox, committer_class: CommitterClass
) -> None:
    """Inserts queued before stop() are committed, not dropped."""
    committer = committer_class(outbox)
    messages = [new_message("async") for _ in range(5)]

    async def enqueue_then_stop() -> None:
        tasks = [asyncio.ensure_future(committer.insert(m)) for m in messages]
        await asyncio.sleep(0)  # every insert is waiting for its batch
        committer.start()
        await committer.stop()
        await asyncio.gather(*tasks)

    asyncio.run(enqueue_then_stop())
    assert stored_ids(outbox) == {m.id for m in messages}


def test_sqlite_commits_on_the_event_loop_and_a_server_database_in_a_thread(
    outbox: Outbox,
) -> None:
    committer: Committer = make_committer(outbox)
    expected = LoopCommitter if outbox.engine.dialect.name == "sqlite" else ThreadCommitter
    assert type(committer) is expected
