"""The outbox on a real database: schema, life cycle, claiming, leases, idempotency, purge."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from service import db
from service.db import (
    INTERRUPTED_SYNC_ERROR,
    DatabaseUnavailable,
    IdempotencyKeyTaken,
    Outbox,
    Outcome,
)
from service.mailer import PermanentDeliveryError, RejectedRecipient, TemporaryDeliveryError
from tests.db.helpers import new_message
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


# -- schema ----------------------------------------------------------------------------


def test_create_schema_makes_both_tables_and_the_queue_indexes_and_can_run_twice(
    outbox: Outbox,
) -> None:
    outbox.create_schema()  # a second time is harmless
    inspector = sa.inspect(outbox.engine)
    assert {"messages", "attempts"} <= set(inspector.get_table_names())
    indexes = {index["name"] for index in inspector.get_indexes("messages")}
    assert {"ix_messages_status_next_attempt", "ix_messages_status_lease"} <= indexes
    unique = inspector.get_unique_constraints("messages")
    assert any(c["column_names"] == ["idempotency_scope"] for c in unique)


# -- life cycle ------------------------------------------------------------------------


def test_async_message_goes_queued_then_sending_then_sent_with_one_attempt_row(
    outbox: Outbox, clock: FakeClock
) -> None:
    message = new_message(recipient="a@example.com", subject="life")
    outbox.insert(message)
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts, record.sent_at) == ("queued", 0, None)
    assert record.to == ["a@example.com"]
    assert record.subject == "life"
    assert record.message_id == message.rendered.message_id
    assert outbox.due_ids(10) == [message.id]
    assert outbox.count_unfinished() == 1

    claimed = outbox.claim([message.id], "owner-1", 30)
    assert [(c.id, c.attempt) for c in claimed] == [(message.id, 1)]
    assert claimed[0].rendered == message.rendered  # the stored bytes, unchanged
    record = outbox.get(message.id)
    assert record is not None
    assert record.status == "sending"
    assert outbox.due_ids(10) == []
    assert outbox.claim([message.id], "owner-2", 30) == []  # nobody claims it twice

    clock.advance(2)
    rejected = [RejectedRecipient("b@example.com", 550, "5.1.1 no such user")]
    outbox.record_outcomes([Outcome(id=message.id, attempt=1, rejected=rejected)])
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts, record.last_error) == ("sent", 1, None)
    assert record.sent_at == clock()
    assert record.updated_at == clock()
    assert record.rejected == rejected
    assert outbox.count_unfinished() == 0
    [attempt] = outbox.attempts(message.id)
    assert (attempt["number"], attempt["outcome"], attempt["code"]) == (1, "sent", None)


def test_temporary_failure_requeues_with_retry_time_and_is_not_due_before_it(
    outbox: Outbox, clock: FakeClock
) -> None:
    message = new_message()
    outbox.insert(message)
    assert len(outbox.claim([message.id], "w", 30)) == 1
    error = TemporaryDeliveryError("4.7.1 Try later", code=451)
    outbox.record_outcomes([Outcome(id=message.id, attempt=1, error=error, retry_at=clock() + 10)])
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts) == ("queued", 1)
    assert record.last_error == "451 4.7.1 Try later"
    assert outbox.count_unfinished() == 1  # waiting to retry still counts
    assert outbox.due_ids(10) == []
    assert outbox.claim([message.id], "w", 30) == []

    clock.advance(10)
    assert outbox.due_ids(10) == [message.id]
    [again] = outbox.claim([message.id], "w", 30)
    assert again.attempt == 2
    assert [a["outcome"] for a in outbox.attempts(message.id)] == ["temporary"]


def test_permanent_failure_fails_the_message_and_keeps_the_error(outbox: Outbox) -> None:
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "w", 30)
    error = PermanentDeliveryError("550 5.1.1 unknown user", code=550, recipient="x@example.com")
    outbox.record_outcomes([Outcome(id=message.id, attempt=1, error=error)])
    record = outbox.get(message.id)
    assert record is not None
    assert record.status == "failed"
    assert record.last_error == "550 5.1.1 unknown user (recipient x@example.com)"
    assert outbox.count_unfinished() == 0
    [attempt] = outbox.attempts(message.id)
    assert (attempt["outcome"], attempt["code"]) == ("permanent", 550)


def test_temporary_failure_without_retry_time_fails_the_message(outbox: Outbox) -> None:
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "w", 30)
    error = TemporaryDeliveryError("connection refused")
    outbox.record_outcomes([Outcome(id=message.id, attempt=1, error=error)])
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.last_error) == ("failed", "connection refused")


def test_record_outcomes_writes_a_whole_batch_in_one_call(outbox: Outbox, clock: FakeClock) -> None:
    messages = [new_message() for _ in range(3)]
    for message in messages:
        outbox.insert(message)
    claimed = outbox.claim([m.id for m in messages], "w", 30)
    assert [c.id for c in claimed] == [m.id for m in messages]  # in the order asked
    sent, retry, failed = claimed
    outbox.record_outcomes(
        [
            Outcome(id=sent.id, attempt=1),
            Outcome(
                id=retry.id,
                attempt=1,
                error=TemporaryDeliveryError("busy", code=421),
                retry_at=clock() + 5,
            ),
            Outcome(id=failed.id, attempt=1, error=PermanentDeliveryError("no", code=554)),
        ]
    )
    statuses = [outbox.get(c.id).status for c in claimed]  # type: ignore[union-attr]
    assert statuses == ["sent", "queued", "failed"]


def test_take_back_claims_takes_the_named_owners_claims_at_once(
    outbox: Outbox, clock: FakeClock
) -> None:
    """A restart's own claims come back now, leases or not; another owner's stay."""
    mine, theirs, done = (new_message() for _ in range(3))
    sync = new_message("sync")
    for message in (mine, theirs, done, sync):
        outbox.insert(message)
    outbox.claim([mine.id, done.id], "test-instance", 30)
    outbox.claim([theirs.id], "another", 30)
    outbox.record_outcomes([Outcome(id=done.id, attempt=1)])
    clock.advance(1)  # well inside every lease
    assert outbox.take_back_claims("test-instance") == 2  # mine, and the sync row
    assert status_of(outbox, mine.id) == "queued"
    assert outbox.due_ids(10) == [mine.id]
    record = outbox.get(mine.id)
    assert record is not None
    assert record.attempts == 1  # it may have reached the relay
    sync_record = outbox.get(sync.id)
    assert sync_record is not None
    assert (sync_record.status, sync_record.last_error) == ("failed", INTERRUPTED_SYNC_ERROR)
    assert status_of(outbox, theirs.id) == "sending"
    assert status_of(outbox, done.id) == "sent"
    assert outbox.take_back_claims("test-instance") == 0


def test_a_taken_back_claim_whose_acceptance_was_recorded_is_sent_not_sent_again(
    outbox: Outbox, clock: FakeClock
) -> None:
    """The relay's 250 was recorded (record_acceptances) and the crash came before the
    batch's rows: the take-back records it sent, as a lease expiry does."""
    accepted, unsent = new_message(), new_message()
    outbox.insert(accepted)
    outbox.insert(unsent)
    outbox.claim([accepted.id, unsent.id], "test-instance", 30)
    clock.advance(1)
    outbox.record_acceptances([Outcome(id=accepted.id, attempt=1, started_at=clock())])
    assert status_of(outbox, accepted.id) == "sending"
    assert outbox.take_back_claims("test-instance") == 2
    record = outbox.get(accepted.id)
    assert record is not None
    assert (record.status, record.attempts, record.sent_at) == ("sent", 1, clock())
    assert [a["outcome"] for a in outbox.attempts(accepted.id)] == ["sent"]
    assert status_of(outbox, unsent.id) == "queued"
    # Recording the batch afterwards (a late writer) changes nothing and logs no
    # second attempt.
    outbox.record_outcomes([Outcome(id=accepted.id, attempt=1)], accepted=[])
    assert len(outbox.attempts(accepted.id)) == 1


def test_take_back_claims_of_everyone_for_a_file_of_ones_own(outbox: Outbox) -> None:
    first, second = new_message(), new_message()
    outbox.insert(first)
    outbox.insert(second)
    outbox.claim([first.id], "one", 30)
    outbox.claim([second.id], "two", 30)
    assert outbox.take_back_claims(None) == 2
    assert [status_of(outbox, m.id) for m in (first, second)] == ["queued", "queued"]


def test_a_sync_row_is_inserted_under_the_outbox_instance(outbox: Outbox) -> None:
    sync = new_message("sync")
    outbox.insert(sync)
    with outbox.engine.connect() as conn:
        owner = conn.execute(sa.text("SELECT owner FROM messages WHERE id = :id"), {"id": sync.id})
        assert owner.scalar_one() == "test-instance"


def status_of(outbox: Outbox, message_id: str) -> str:
    record = outbox.get(message_id)
    assert record is not None
    return record.status


def test_outcome_of_a_stale_claim_does_not_overwrite_the_newer_one(
    outbox: Outbox, clock: FakeClock
) -> None:
    """A worker whose lease expired and whose message was re-claimed cannot clobber it."""
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "slow", 30)
    clock.advance(31)
    assert outbox.reclaim_expired_leases() == 1
    [second] = outbox.claim([message.id], "fast", 30)
    assert second.attempt == 2
    outbox.record_outcomes([Outcome(id=message.id, attempt=2)])
    outbox.record_outcomes(
        [Outcome(id=message.id, attempt=1, error=PermanentDeliveryError("late", code=550))]
    )
    record = outbox.get(message.id)
    assert record is not None
    assert record.status == "sent"
    assert len(outbox.attempts(message.id)) == 2  # both attempts are logged


def test_unclaim_puts_claimed_messages_back_without_counting_an_attempt(
    outbox: Outbox,
) -> None:
    message = new_message()
    outbox.insert(message)
    claimed = outbox.claim([message.id], "me", 30)
    assert outbox.unclaim(claimed, "someone-else") == 0  # not theirs to give back
    assert outbox.unclaim(claimed, "me") == 1
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts) == ("queued", 0)
    assert outbox.due_ids(10) == [message.id]
    assert outbox.unclaim([], "me") == 0


def test_claim_skips_sync_messages_and_unknown_ids(outbox: Outbox) -> None:
    sync = new_message("sync")
    outbox.insert(sync)
    assert outbox.claim([sync.id, "0" * 32], "w", 30) == []
    assert outbox.claim([], "w", 30) == []
    assert outbox.count_unfinished() == 0  # sync rows are not in the async backlog


def test_due_ids_are_oldest_due_first_and_limited(outbox: Outbox, clock: FakeClock) -> None:
    ids = []
    for _ in range(5):
        message = new_message()
        outbox.insert(message)
        ids.append(message.id)
        clock.advance(1)
    assert outbox.due_ids(3) == ids[:3]
    assert outbox.due_ids(0) == []


def test_oldest_queued_age_follows_the_clock(outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.oldest_queued_age() is None
    outbox.insert(new_message())
    clock.advance(7)
    outbox.insert(new_message())
    assert outbox.oldest_queued_age() == pytest.approx(7)


def test_get_unknown_id_is_none(outbox: Outbox) -> None:
    assert outbox.get("f" * 32) is None
    assert outbox.raw("f" * 32) is None


# -- claiming under concurrency --------------------------------------------------------


def test_eight_threads_claiming_2000_rows_claim_each_exactly_once(outbox: Outbox) -> None:
    messages = [new_message() for _ in range(2000)]
    with outbox.engine.begin() as conn:  # bulk set-up; insert() is tested elsewhere
        conn.execute(
            db.messages_table.insert(),
            [
                {
                    "id": m.id,
                    "mode": "async",
                    "status": "queued",
                    "mail_from": m.rendered.mail_from,
                    "rcpt_tos": json.dumps(m.rendered.rcpt_tos),
                    "to_addrs": json.dumps(m.to),
                    "subject": m.subject,
                    "message_id": m.rendered.message_id,
                    "smtputf8": False,
                    "raw": m.rendered.data,
                    "attempts": 0,
                    "created_at": 0.0,
                    "updated_at": 0.0,
                    "next_attempt_at": 0.0,
                }
                for m in messages
            ],
        )
    ids = [m.id for m in messages]
    won: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            # Every thread walks all ids in overlapping random batches, so each id is
            # asked for by all eight threads.
            order = ids[:]
            rng.shuffle(order)
            for i in range(0, len(order), 25):
                claimed = outbox.claim(order[i : i + 25], f"t{seed}", 30)
                with lock:
                    won.update(c.id for c in claimed)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(won) == set(ids)
    assert max(won.values()) == 1
    with outbox.engine.connect() as conn:
        statuses = conn.execute(
            sa.select(db.messages_table.c.status, sa.func.count()).group_by(
                db.messages_table.c.status
            )
        ).all()
    assert dict(statuses) == {"sending": 2000}


# -- leases ----------------------------------------------------------------------------


def test_expired_async_lease_goes_back_to_queued_and_sync_becomes_failed(
    outbox: Outbox, clock: FakeClock
) -> None:
    async_msg, fresh_msg, sync_msg = new_message(), new_message(), new_message("sync")
    for message in (async_msg, fresh_msg, sync_msg):
        outbox.insert(message)
    outbox.claim([async_msg.id], "dead", 10)
    clock.advance(5)
    outbox.claim([fresh_msg.id], "alive", 30)
    assert outbox.reclaim_expired_leases() == 0  # nothing has expired yet

    clock.advance(26)  # async_msg (10 s) and sync_msg (30 s) expired; fresh_msg (30 s) not
    assert outbox.reclaim_expired_leases() == 2
    requeued = outbox.get(async_msg.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == ("queued", 1)
    assert outbox.due_ids(10) == [async_msg.id]  # due at once
    interrupted = outbox.get(sync_msg.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.last_error) == ("failed", INTERRUPTED_SYNC_ERROR)
    still = outbox.get(fresh_msg.id)
    assert still is not None
    assert still.status == "sending"
    assert outbox.reclaim_expired_leases() == 0


# -- the synchronous path --------------------------------------------------------------


def test_sync_message_is_inserted_sending_and_finished_with_its_answer(
    outbox: Outbox, clock: FakeClock
) -> None:
    message = new_message("sync", scope="key:sync")
    outbox.insert(message)
    record = outbox.get(message.id)
    assert record is not None
    assert record.status == "sending"
    in_progress = outbox.find_idempotent("key:sync")
    assert in_progress is not None
    assert in_progress.response_code is None  # a repeat now answers 409

    error = TemporaryDeliveryError("4.3.0 later", code=451)
    outbox.record_attempt(Outcome(id=message.id, attempt=1, error=error, retry_at=clock() + 100))
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts, record.last_error) == ("sending", 1, "451 4.3.0 later")
    clock.advance(120)  # past the original lease, but the attempt renewed it
    assert outbox.reclaim_expired_leases() == 0

    outbox.finish_sync(Outcome(id=message.id, attempt=2), 200, '{"ok": true}')
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.attempts, record.last_error) == ("sent", 2, None)
    done = outbox.find_idempotent("key:sync")
    assert done is not None
    assert (done.response_code, done.response_body) == (200, '{"ok": true}')
    assert [a["outcome"] for a in outbox.attempts(message.id)] == ["temporary", "sent"]


def test_sync_failure_is_recorded_failed(outbox: Outbox) -> None:
    message = new_message("sync")
    outbox.insert(message)
    error = PermanentDeliveryError("5.7.1 relay denied", code=550)
    outbox.finish_sync(Outcome(id=message.id, attempt=1, error=error), 500, "{}")
    record = outbox.get(message.id)
    assert record is not None
    assert (record.status, record.last_error) == ("failed", "550 5.7.1 relay denied")
    assert record.sent_at is None


# -- idempotency -----------------------------------------------------------------------


def test_concurrent_inserts_with_one_idempotency_key_store_one_message(outbox: Outbox) -> None:
    contenders = [new_message(scope="fp:key-1") for _ in range(8)]
    start = threading.Barrier(len(contenders))
    results: dict[str, str] = {}

    def insert(message: db.NewMessage) -> None:
        start.wait()
        try:
            outbox.insert(message)
            results[message.id] = "stored"
        except IdempotencyKeyTaken:
            results[message.id] = "taken"

    threads = [threading.Thread(target=insert, args=(m,)) for m in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["stored"] + ["taken"] * 7
    [winner] = [mid for mid, result in results.items() if result == "stored"]
    record = outbox.find_idempotent("fp:key-1")
    assert record is not None
    assert record.message_id == winner
    assert (record.request_hash, record.response_code) == ("hash-1", 202)
    assert outbox.count_unfinished() == 1


def test_find_idempotent_ignores_keys_older_than_not_before(
    outbox: Outbox, clock: FakeClock
) -> None:
    outbox.insert(new_message(scope="fp:old"))
    clock.advance(100)
    assert outbox.find_idempotent("fp:old", not_before=clock() - 50) is None
    assert outbox.find_idempotent("fp:old", not_before=clock() - 150) is not None
    assert outbox.find_idempotent("fp:unknown") is None


def test_purge_forgets_old_keys_so_they_can_be_used_again(outbox: Outbox, clock: FakeClock) -> None:
    old = new_message(scope="fp:k")
    outbox.insert(old)
    clock.advance(10)
    recent = new_message(scope="fp:recent")
    outbox.insert(recent)
    outbox.purge(idempotency_before=clock() - 5, bodies_sent_before=None)
    assert outbox.find_idempotent("fp:k") is None
    assert outbox.find_idempotent("fp:recent") is not None
    outbox.insert(new_message(scope="fp:k"))  # the key is free again
    assert outbox.get(old.id) is not None  # the log row stays


def test_purge_drops_bodies_of_old_sent_messages_only(outbox: Outbox, clock: FakeClock) -> None:
    old_sent, new_sent, queued = new_message(), new_message(), new_message()
    for message in (old_sent, queued):
        outbox.insert(message)
    outbox.claim([old_sent.id], "w", 30)
    outbox.record_outcomes([Outcome(id=old_sent.id, attempt=1)])
    clock.advance(100)
    outbox.insert(new_sent)
    outbox.claim([new_sent.id], "w", 30)
    outbox.record_outcomes([Outcome(id=new_sent.id, attempt=1)])

    outbox.purge(idempotency_before=0, bodies_sent_before=None)
    assert outbox.raw(old_sent.id) is not None  # retention unset: keep everything

    outbox.purge(idempotency_before=0, bodies_sent_before=clock() - 50)
    assert outbox.raw(old_sent.id) is None
    assert outbox.raw(new_sent.id) == new_sent.rendered.data
    assert outbox.raw(queued.id) == queued.rendered.data
    record = outbox.get(old_sent.id)
    assert record is not None
    assert record.status == "sent"  # the log row stays


def test_acceptances_on_a_held_connection_survive_a_failed_write(outbox: Outbox) -> None:
    """A write that fails hands its connection back; the next one checks out another."""
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "test-instance", 30)
    held = outbox.hold_connection()
    try:
        integrity_error = outbox.engine.dialect.loaded_dbapi.IntegrityError
        with pytest.raises(integrity_error):  # no such message: refused whole
            outbox.record_acceptances([Outcome(id="0" * 32, attempt=1)], held)
        outbox.record_acceptances([Outcome(id=message.id, attempt=1)], held)
        if outbox.engine.dialect.name == "postgresql":
            # The server drops the kept connection: one write fails, the next reconnects.
            pid = held._conn.driver_connection.info.backend_pid
            with outbox.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DatabaseUnavailable):
                outbox.record_acceptances([Outcome(id=message.id, attempt=2)], held)
            outbox.record_acceptances([Outcome(id=message.id, attempt=3)], held)
    finally:
        held.close()
    numbers = [a["number"] for a in outbox.attempts(message.id)]
    assert numbers == ([1, 3] if outbox.engine.dialect.name == "postgresql" else [1])
