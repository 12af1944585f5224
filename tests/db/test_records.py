"""The outbox's records on SQLite and PostgreSQL: owned rows, tags, the keyset list,
cancel as one conditional statement, scheduled rows released when due."""

from __future__ import annotations

import dataclasses

import pytest

from service.db import Outbox
from service.db.reads import MessageFilter
from service.ids import new_id
from tests.db.helpers import OutboxFactory, new_message
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


@pytest.fixture
def outbox(database_url: str, outbox_factory: OutboxFactory) -> Outbox:
    return outbox_factory(database_url)


def insert(outbox: Outbox, key: str = "billing", **fields: object) -> str:
    message = dataclasses.replace(new_message(), id=new_id(), key_name=key, **fields)  # type: ignore[arg-type]
    outbox.insert(message)
    return message.id


def test_list_is_one_keys_newest_first_from_the_cursor(outbox: Outbox) -> None:
    mine = [insert(outbox) for _ in range(7)]
    insert(outbox, key="support")
    where = MessageFilter(key_name="billing")
    assert [r.id for r in outbox.list_messages(where, 100)] == mine[::-1]
    page = outbox.list_messages(dataclasses.replace(where, before_id=mine[4]), 2)
    assert [r.id for r in page] == [mine[3], mine[2]]


def test_tags_are_stored_listed_and_filtered(outbox: Outbox) -> None:
    tagged = insert(outbox, tags=["a", "b"], metadata={"k": "v"})
    insert(outbox, tags=["b"], key="support")
    insert(outbox)
    found = outbox.list_messages(MessageFilter(key_name="billing", tag="a"), 10)
    assert [(r.id, r.tags, r.metadata) for r in found] == [(tagged, ["a", "b"], {"k": "v"})]
    assert outbox.list_messages(MessageFilter(key_name="billing", tag="c"), 10) == []


def test_get_is_scoped_to_the_key_name(outbox: Outbox) -> None:
    made = insert(outbox)
    assert outbox.get(made, "support") is None
    record = outbox.get(made, "billing")
    assert record is not None
    assert record.id == made


def test_cancel_takes_queued_and_scheduled_only(outbox: Outbox, clock: FakeClock) -> None:
    queued = insert(outbox)
    scheduled = insert(outbox, send_at=clock() + 60)
    claimed = insert(outbox)
    assert [c.id for c in outbox.claim([claimed], "me", 30)] == [claimed]
    assert outbox.cancel(queued, "support") is False  # another key's
    assert outbox.cancel(queued, "billing") is True
    assert outbox.cancel(scheduled, "billing") is True
    assert outbox.cancel(claimed, "billing") is False
    statuses = {r.id: r.status for r in outbox.list_messages(MessageFilter("billing"), 10)}
    assert statuses == {queued: "cancelled", scheduled: "cancelled", claimed: "sending"}
    assert outbox.claim([queued], "me", 30) == []
    assert outbox.count_unfinished() == 1  # the claimed one


def test_scheduled_rows_are_released_when_due_and_not_counted_before(
    outbox: Outbox, clock: FakeClock
) -> None:
    made = insert(outbox, send_at=clock() + 10)
    assert outbox.count_unfinished() == 0
    assert outbox.due_ids(10) == []
    assert outbox.release_scheduled() == 0
    clock.advance(10)
    assert outbox.release_scheduled() == 1
    assert outbox.due_ids(10) == [made]
    assert outbox.count_unfinished() == 1
    record = outbox.get(made)
    assert record is not None
    assert record.status == "queued"
    assert [e.type for e in record.events] == ["message.scheduled", "message.queued"]
