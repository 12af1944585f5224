"""Events written with their causes, claimed for webhooks under a lease, and the
suppression list, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from service.db import Outbox
from service.db.bounces import BouncedAddress
from service.db.schema import events_table, suppressions_table
from service.errors import PermanentDeliveryError, TemporaryDeliveryError
from service.types import Outcome, RejectedRecipient
from tests.db.helpers import new_message
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


@pytest.fixture
def hooked(outbox: Outbox, clock: FakeClock) -> Outbox:
    """The same database, written by an outbox that has a webhook receiver."""
    return Outbox(outbox.engine, clock=clock, lease_seconds=30.0, instance="a", webhooks=True)


def events(outbox: Outbox) -> list[dict[str, Any]]:
    with outbox.engine.connect() as conn:
        rows = conn.execute(sa.select(events_table).order_by(events_table.c.id)).all()
    return [dict(row._mapping) for row in rows]


def suppressed(outbox: Outbox) -> dict[str, str]:
    with outbox.engine.connect() as conn:
        rows = conn.execute(sa.select(suppressions_table)).all()
    return {row.address: row.reason for row in rows}


def claimed(outbox: Outbox) -> Any:
    message = new_message()
    outbox.insert(message)
    (claim,) = outbox.claim([message.id], "a", 30)
    return claim


def test_each_outcome_writes_its_event_in_its_transaction(hooked: Outbox) -> None:
    sent, deferred, failed = claimed(hooked), claimed(hooked), claimed(hooked)
    hooked.record_acceptances([Outcome(id=sent.id, attempt=1)])
    hooked.record_outcomes(
        [
            Outcome(id=sent.id, attempt=1),
            Outcome(
                id=deferred.id,
                attempt=1,
                error=TemporaryDeliveryError("try later", code=451),
                retry_at=1e12,
            ),
            Outcome(id=failed.id, attempt=1, error=PermanentDeliveryError("no", code=550)),
        ],
        accepted=[],
    )
    written = {(e["message_id"], e["type"], e["code"], e["webhook"]) for e in events(hooked)}
    assert written == {
        (sent.id, "message.sent", None, "pending"),
        (deferred.id, "message.deferred", 451, "pending"),
        (failed.id, "message.failed", 550, "pending"),
    }
    record = hooked.get(failed.id)
    assert record is not None
    assert [e.type for e in record.events] == ["message.queued", "message.failed"]


def test_without_a_receiver_delivery_writes_its_attempt_log_only(outbox: Outbox) -> None:
    """Nobody listens: the delivery path costs what it did before webhooks, and the
    timeline still shows the outcome, from the attempt log."""
    message = claimed(outbox)
    outbox.record_acceptances([Outcome(id=message.id, attempt=1)])
    outbox.record_outcomes([Outcome(id=message.id, attempt=1)], accepted=[])
    assert events(outbox) == []
    record = outbox.get(message.id)
    assert record is not None
    assert [e.type for e in record.events] == ["message.queued", "message.sent"]
    assert outbox.claim_events("a", 10, 30) == []


def test_cancel_writes_its_event_and_a_refused_cancel_writes_none(hooked: Outbox) -> None:
    message = new_message()
    hooked.insert(message)
    assert hooked.cancel(message.id, "nobody") is True
    assert hooked.cancel(message.id, "nobody") is False
    assert [e["type"] for e in events(hooked)] == ["message.cancelled"]


def test_sync_attempts_and_the_interrupted_sync_send_write_events(hooked: Outbox) -> None:
    first = new_message("sync")
    hooked.insert(first)
    hooked.record_attempt(
        Outcome(id=first.id, attempt=1, error=TemporaryDeliveryError("busy", code=421))
    )
    hooked.finish_sync(Outcome(id=first.id, attempt=2), 200, "{}")
    cut = new_message("sync")
    hooked.insert(cut)
    hooked.take_back_claims(None)
    kinds = [(e["message_id"], e["type"]) for e in events(hooked)]
    assert kinds == [
        (first.id, "message.deferred"),
        (first.id, "message.sent"),
        (cut.id, "message.failed"),
    ]


def test_refused_recipients_with_5xx_are_suppressed_with_the_outcome(hooked: Outbox) -> None:
    partial, whole = claimed(hooked), claimed(hooked)
    everyone_refused = PermanentDeliveryError("all recipients refused", code=550)
    everyone_refused.refused = [("Gone@Example.com", 550, "5.1.1 no"), ("busy@x.org", 450, "later")]
    hooked.record_outcomes(
        [
            Outcome(
                id=partial.id,
                attempt=1,
                rejected=[
                    RejectedRecipient("nobody@example.com", 550, "5.1.1 unknown"),
                    RejectedRecipient("full@example.com", 452, "4.2.2 full"),
                ],
            ),
            Outcome(id=whole.id, attempt=1, error=everyone_refused),
        ]
    )
    assert suppressed(hooked) == {
        "nobody@example.com": "hard_bounce",
        "gone@example.com": "hard_bounce",
    }
    assert hooked.suppressed(["GONE@example.com", "ok@example.com"]) == ["gone@example.com"]


def sent_to(outbox: Outbox, *recipients: str) -> str:
    message = new_message()
    rendered = dataclasses.replace(message.rendered, rcpt_tos=list(recipients))
    message = dataclasses.replace(message, rendered=rendered)
    outbox.insert(message)
    (claim,) = outbox.claim([message.id], "a", 30)
    outbox.record_outcomes([Outcome(id=claim.id, attempt=claim.attempt)])
    return message.id


def test_a_bounce_marks_the_record_writes_one_event_per_recipient_and_suppresses_hard_ones(
    hooked: Outbox,
) -> None:
    record_id = sent_to(hooked, "a@example.com", "b@example.com")
    bounced = [
        BouncedAddress("A@Example.com", 550, "5.1.1 smtp; 550 no such user", permanent=True),
        BouncedAddress("b@example.com", None, "4.4.7 gave up", permanent=False),
    ]
    assert hooked.record_bounce(record_id, bounced) == 2
    record = hooked.get(record_id)
    assert record is not None
    assert record.status == "bounced"
    assert [(e.type, e.recipient, e.code) for e in record.events[-2:]] == [
        ("message.bounced", "A@Example.com", 550),
        ("message.bounced", "b@example.com", None),
    ]
    assert suppressed(hooked) == {"a@example.com": "hard_bounce"}
    assert hooked.record_bounce("f" * 32, bounced) is None


def test_a_bounce_recorded_before_the_batch_comes_after_the_relays_answer(
    hooked: Outbox, clock: FakeClock
) -> None:
    """The relay said 250 at t, its DSN was recorded at t+1 and the batch that
    records the acceptance only at t+2: `message.sent` is dated t (when the relay
    answered), so the receiver and the timeline see it before the bounce."""
    claim = claimed(hooked)
    answered = clock()
    clock.advance(1)
    bounced = [BouncedAddress("rcpt@example.com", 550, "5.1.1 no such user", permanent=True)]
    assert hooked.record_bounce(claim.id, bounced) == 1
    clock.advance(1)
    outcome = Outcome(id=claim.id, attempt=1, finished_at=answered)
    hooked.record_acceptances([outcome])
    hooked.record_outcomes([outcome], accepted=[])
    by_time = sorted(events(hooked), key=lambda e: e["at"])
    assert [(e["type"], e["at"]) for e in by_time] == [
        ("message.sent", answered),
        ("message.bounced", answered + 1),
    ]
    record = hooked.get(claim.id)
    assert record is not None
    assert [e.type for e in record.events] == [
        "message.queued",
        "message.sent",
        "message.bounced",
    ]


def test_a_report_naming_addresses_the_message_did_not_go_to_suppresses_nobody(
    hooked: Outbox,
) -> None:
    """Every recipient sees the record id (envelope sender, Message-ID): a forged
    report must not put someone else's address on the shared list."""
    record_id = sent_to(hooked, "a@example.com")
    forged = [BouncedAddress("ceo@victim.example", 550, "5.1.1 forged", permanent=True)]
    assert hooked.record_bounce(record_id, forged) == 0
    record = hooked.get(record_id)
    assert record is not None
    assert record.status == "sent"
    assert suppressed(hooked) == {}
    queued = new_message()
    hooked.insert(queued)  # never sent: nothing of it can bounce
    assert hooked.record_bounce(queued.id, forged) is None


def test_claimed_events_carry_the_message_and_are_held_until_their_lease_ends(
    hooked: Outbox, clock: FakeClock
) -> None:
    message = claimed(hooked)
    hooked.record_acceptances([Outcome(id=message.id, attempt=1)])
    (event,) = hooked.claim_events("a", 10, 30)
    assert (event.record_id, event.type, event.to, event.attempts) == (
        message.id,
        "message.sent",
        ["rcpt@example.com"],
        1,
    )
    assert hooked.claim_events("b", 10, 30) == []  # held by a
    clock.advance(31)
    (again,) = hooked.claim_events("b", 10, 30)  # a's lease ran out
    assert again.id == event.id
    hooked.release_events([again.id], "a")  # a is not the holder: nothing changes
    assert hooked.claim_events("c", 10, 30) == []
    hooked.events_delivered([again.id])
    assert not hooked.any_pending_event()


def test_released_events_are_claimed_again_oldest_first(hooked: Outbox) -> None:
    for _ in range(3):
        hooked.record_acceptances([Outcome(id=claimed(hooked).id, attempt=1)])
    first = hooked.claim_events("a", 2, 30)
    hooked.release_events([e.id for e in first], "a")
    assert [e.id for e in hooked.claim_events("a", 3, 30)] == sorted(
        [*(e.id for e in first), max(e["id"] for e in events(hooked))]
    )
    assert [e["webhook_tries"] for e in events(hooked)] == [1, 1, 0]


def test_a_restart_takes_back_its_own_event_claims_at_once(hooked: Outbox) -> None:
    hooked.record_acceptances([Outcome(id=claimed(hooked).id, attempt=1)])
    assert len(hooked.claim_events("a", 10, 30)) == 1
    assert hooked.take_back_event_claims("b") == 0
    assert hooked.take_back_event_claims("a") == 1
    assert len(hooked.claim_events("b", 10, 30)) == 1


def test_events_older_than_the_max_age_are_dropped(hooked: Outbox, clock: FakeClock) -> None:
    hooked.record_acceptances([Outcome(id=claimed(hooked).id, attempt=1)])
    assert hooked.drop_old_events(clock() - 1) == 0
    clock.advance(10)
    assert hooked.drop_old_events(clock() - 5) == 1
    assert [e["webhook"] for e in events(hooked)] == ["dropped"]
    assert hooked.claim_events("a", 10, 30) == []


def test_two_dispatchers_claiming_at_once_never_share_an_event(hooked: Outbox) -> None:
    hooked.record_acceptances([Outcome(id=claimed(hooked).id, attempt=1) for _ in range(200)])
    got: dict[str, list[int]] = {"a": [], "b": []}

    def claim_all(owner: str) -> None:
        while batch := hooked.claim_events(owner, 7, 300):
            got[owner].extend(e.id for e in batch)

    threads = [threading.Thread(target=claim_all, args=(owner,)) for owner in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(got["a"]) & set(got["b"])
    assert len(got["a"]) + len(got["b"]) == 200


def test_the_suppression_list_pages_newest_first_without_skipping(
    outbox: Outbox, clock: FakeClock
) -> None:
    for n in range(7):
        outbox.suppress(f"user{n}@example.com", "manual")
        if n % 2:
            clock.advance(1)  # some share a time: the address breaks the tie
    seen: list[str] = []
    after = None
    while page := outbox.list_suppressions(3, after):
        seen.extend(entry.address for entry in page)
        after = (page[-1].created_at, page[-1].address)
    assert len(seen) == len(set(seen)) == 7
    entry, added = outbox.suppress("USER1@example.com", "hard_bounce")
    assert (entry.reason, added) == ("manual", False)  # the first reason is kept
    assert outbox.unsuppress("user1@example.com") is True
    assert outbox.unsuppress("user1@example.com") is False


def test_a_stale_claims_failure_writes_no_event_where_its_outcome_was_not_written(
    hooked: Outbox, clock: FakeClock
) -> None:
    """The lease ran out, another worker took the message and sent it; the first
    worker's late failure changes nothing, so it tells no receiver anything either."""
    stale = claimed(hooked)
    clock.advance(31)
    hooked.reclaim_expired_leases()
    (fresh,) = hooked.claim([stale.id], "b", 30)
    hooked.record_outcomes([Outcome(id=fresh.id, attempt=fresh.attempt)])
    hooked.record_outcomes(
        [Outcome(id=stale.id, attempt=stale.attempt, error=PermanentDeliveryError("x", code=550))]
    )
    record = hooked.get(stale.id)
    assert record is not None
    assert record.status == "sent"
    assert [e["type"] for e in events(hooked)] == ["message.sent"]
