"""MailQueueWorker against a real fakesmtp and a real database; only the clock is fake."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakesmtp import FakeSMTPServer, FaultRule
from service import mailer
from service.db import DatabaseUnavailable, NewMessage, Outbox
from service.mailer import RenderedMessage, SendResult
from service.metrics import Metrics
from service.queue_worker import MailQueueWorker, QueueFull, Sender, ShuttingDown
from tests.db.helpers import OutboxFactory, make_settings, new_message
from tests.helpers import FakeClock, WrappingSender, wait_until

pytestmark = pytest.mark.unit


def status(outbox: Outbox, message_id: str) -> tuple[str, int]:
    record = outbox.get(message_id)
    assert record is not None
    return record.status, record.attempts


def next_attempt_at(outbox: Outbox, message_id: str) -> float:
    from service.db import messages_table

    with outbox.engine.connect() as conn:
        value = conn.execute(
            messages_table.select()
            .with_only_columns(messages_table.c.next_attempt_at)
            .where(messages_table.c.id == message_id)
        ).scalar_one()
    return float(value)


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Iterator[FakeSMTPServer]:
    """fakesmtp with its defaults (PIPELINING and CHUNKING), or the options a test
    gives by indirect parametrization."""
    with FakeSMTPServer(**getattr(request, "param", {})) as server:
        yield server


class Harness:
    """Builds workers on one SQLite file against one fakesmtp; stops them all at the end."""

    def __init__(
        self, url: str, smtp: FakeSMTPServer, clock: FakeClock, outbox_factory: OutboxFactory
    ) -> None:
        self.url = url
        self.smtp = smtp
        self.clock = clock
        self.outbox_factory = outbox_factory
        self.workers: list[MailQueueWorker] = []

    def settings(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "smtp_host": self.smtp.host,
            "smtp_port": self.smtp.port,
            "smtp_timeout": 5.0,
            "worker_concurrency": 2,
            "poll_interval": 0.02,
            "lease_seconds": 30.0,
            "smtp_backoff_base": 10.0,
            "smtp_backoff_max": 60.0,
        }
        values.update(overrides)
        return make_settings(self.url, **values)

    def worker(
        self,
        *,
        outbox: Outbox | None = None,
        sender_factory: Callable[[], Sender] | None = None,
        metrics: Metrics | None = None,
        batch_size: int = 8,
        **overrides: Any,
    ) -> tuple[MailQueueWorker, Outbox]:
        settings = self.settings(**overrides)
        outbox = outbox or self.outbox_factory(self.url)

        def real_sender() -> Sender:
            return mailer.SMTPConnection(settings)

        worker = MailQueueWorker(
            outbox,
            settings,
            sender_factory=sender_factory or real_sender,
            clock=self.clock,
            metrics=metrics,
            batch_size=batch_size,
        )
        self.workers.append(worker)
        return worker, outbox

    def received(self) -> Counter[str | None]:
        return Counter(m.message_id for m in self.smtp.messages())


@pytest.fixture
def harness(
    database_url: str, smtp: FakeSMTPServer, clock: FakeClock, outbox_factory: OutboxFactory
) -> Iterator[Harness]:
    h = Harness(database_url, smtp, clock, outbox_factory)
    try:
        yield h
    finally:
        for worker in h.workers:
            worker.stop(5)


def accept(worker: MailQueueWorker, outbox: Outbox, message: NewMessage) -> None:
    """What /send_async does: reserve, commit, enqueue."""
    worker.reserve()
    outbox.insert(message)
    worker.enqueue(message.id)


# -- delivery ---------------------------------------------------------------------------


def test_every_message_is_delivered_exactly_once(harness: Harness) -> None:
    worker, outbox = harness.worker(worker_concurrency=3)
    before = [new_message(recipient=f"early{n}@example.com") for n in range(30)]
    for message in before:
        outbox.insert(message)  # a backlog from before the start
    worker.start()
    # Counted from the database (test_backlog_bound_* pins that); a fast relay may
    # have delivered a batch already.
    assert worker.backlog <= 30
    after = [new_message(recipient=f"late{n}@example.com") for n in range(30)]
    for message in after:
        accept(worker, outbox, message)

    expected = {m.rendered.message_id for m in before + after}
    harness.smtp.wait_for(60)
    wait_until(lambda: outbox.count_unfinished() == 0, what="all recorded")
    received = harness.received()
    assert set(received) == expected
    assert max(received.values()) == 1
    for message in before + after:
        assert status(outbox, message.id) == ("sent", 1)
    wait_until(lambda: worker.backlog == 0, what="backlog back to 0")
    assert worker.queue_depth == 0


@pytest.mark.postgres
def test_two_instances_on_one_database_deliver_each_message_once(
    pg_url: str, smtp: FakeSMTPServer, clock: FakeClock, outbox_factory: OutboxFactory
) -> None:
    """Both workers are offered every id (their schedulers see the whole table).
    PostgreSQL only: a SQLite file is one instance's (service/instance.py)."""
    harness = Harness(pg_url, smtp, clock, outbox_factory)
    try:
        two_instances_deliver_each_message_once(harness, outbox_factory)
    finally:
        for worker in harness.workers:
            worker.stop(5)


def two_instances_deliver_each_message_once(
    harness: Harness, outbox_factory: OutboxFactory
) -> None:
    first, first_outbox = harness.worker(worker_concurrency=2, instance_id="first")
    second, _ = harness.worker(
        outbox=outbox_factory(harness.url), worker_concurrency=2, instance_id="second"
    )
    messages = [new_message(recipient=f"r{n}@example.com") for n in range(100)]
    for message in messages:
        first_outbox.insert(message)
    first.start()
    second.start()
    harness.smtp.wait_for(100)
    wait_until(lambda: first_outbox.count_unfinished() == 0, what="all recorded")
    received = harness.received()
    assert set(received) == {m.rendered.message_id for m in messages}
    assert max(received.values()) == 1


def test_451_waits_its_backoff_in_the_database_while_the_only_thread_keeps_delivering(
    harness: Harness, clock: FakeClock
) -> None:
    """WORKER_CONCURRENCY=1: the retry holds no thread; other mail flows meanwhile."""
    harness.smtp.add_fault(
        FaultRule(stage="rcpt", action="reply", code=451, message="4.7.1 Try later", match="held@")
    )
    metrics = Metrics()
    worker, outbox = harness.worker(worker_concurrency=1, metrics=metrics)
    worker.start()
    held = new_message(recipient="held@example.com")
    accept(worker, outbox, held)
    wait_until(lambda: status(outbox, held.id) == ("queued", 1), what="held back to queued")
    retry_at = next_attempt_at(outbox, held.id)
    # Retry 1 waits between base/2 and base (equal jitter), counted from the fake now.
    assert clock() + 5.0 <= retry_at <= clock() + 10.0

    others = [new_message(recipient=f"other{n}@example.com") for n in range(5)]
    for message in others:
        accept(worker, outbox, message)
    harness.smtp.wait_for(5)
    wait_until(lambda: all(status(outbox, m.id)[0] == "sent" for m in others), what="others")
    assert status(outbox, held.id) == ("queued", 1)  # still waiting, no thread held
    # The backlog counts a batch down just after its outcomes commit: a moment after
    # the status reads "sent".
    wait_until(lambda: worker.backlog == 1, what="the others counted down")

    harness.smtp.clear_faults()
    clock.advance(10.0)
    wait_until(lambda: status(outbox, held.id) == ("sent", 2), what="held delivered")
    assert harness.received()[held.rendered.message_id] == 1
    assert [a["outcome"] for a in outbox.attempts(held.id)] == ["temporary", "sent"]
    sample = metrics.registry.get_sample_value
    labels = {"mode": "async", "outcome": "retried", "code": "451"}
    assert sample("mail_delivery_attempts_total", labels) == 1
    labels = {"mode": "async", "outcome": "sent", "code": "none"}
    assert sample("mail_delivery_attempts_total", labels) == 6


def test_550_fails_at_once_with_no_retry(harness: Harness, clock: FakeClock) -> None:
    harness.smtp.add_fault(
        FaultRule(stage="rcpt", action="reply", code=550, message="5.1.1 No such user")
    )
    worker, outbox = harness.worker()
    worker.start()
    message = new_message()
    accept(worker, outbox, message)
    wait_until(lambda: status(outbox, message.id)[0] == "failed", what="failed")
    clock.advance(3600)
    time.sleep(0.1)  # several scheduler polls: nothing may pick it up again
    record = outbox.get(message.id)
    assert record is not None
    assert record.attempts == 1
    assert record.last_error is not None
    assert record.last_error.startswith("550 5.1.1 No such user")
    assert [a["outcome"] for a in outbox.attempts(message.id)] == ["permanent"]
    wait_until(lambda: worker.backlog == 0, what="counted down")


def test_retries_used_up_fail_the_message_with_the_last_error(
    harness: Harness, clock: FakeClock
) -> None:
    harness.smtp.add_fault(
        FaultRule(stage="rcpt", action="reply", code=452, message="4.2.2 Mailbox full")
    )
    worker, outbox = harness.worker(smtp_max_retries=2)
    worker.start()
    message = new_message()
    accept(worker, outbox, message)
    for attempt in (1, 2):
        wait_until(lambda a=attempt: status(outbox, message.id) == ("queued", a), what="retry")  # type: ignore[misc]
        clock.advance(61)  # past any backoff (SMTP_BACKOFF_MAX is 60)
    wait_until(lambda: status(outbox, message.id)[0] == "failed", what="failed")
    record = outbox.get(message.id)
    assert record is not None
    assert record.attempts == 3  # the first attempt and two retries
    assert record.last_error is not None
    assert record.last_error.startswith("452 4.2.2 Mailbox full")
    assert [a["outcome"] for a in outbox.attempts(message.id)] == ["temporary"] * 3
    assert harness.received() == Counter()


def test_start_takes_back_this_instances_own_claims_at_once(
    harness: Harness, clock: FakeClock
) -> None:
    """A restart's claims come back with no lease to wait for (the clock stands still)."""
    worker, outbox = harness.worker(instance_id="restarted", poll_interval=60)
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "restarted", 600)
    worker.start()
    wait_until(lambda: status(outbox, message.id) == ("sent", 2), what="redelivered")
    assert harness.received()[message.rendered.message_id] == 1


@pytest.mark.postgres
def test_another_instances_claim_is_delivered_after_its_lease_expires(
    pg_url: str, smtp: FakeSMTPServer, clock: FakeClock, outbox_factory: OutboxFactory
) -> None:
    """PostgreSQL: a dead instance's claims wait for their lease (it might be alive)."""
    harness = Harness(pg_url, smtp, clock, outbox_factory)
    worker, outbox = harness.worker(instance_id="alive")
    try:
        message = new_message()
        outbox.insert(message)
        outbox.claim([message.id], "dead-instance", 10)
        worker.start()
        time.sleep(0.1)
        assert status(outbox, message.id) == ("sending", 1)  # its lease still holds
        clock.advance(11)
        wait_until(lambda: status(outbox, message.id) == ("sent", 2), what="redelivered")
        assert harness.received()[message.rendered.message_id] == 1
    finally:
        worker.stop(5)


def test_on_sqlite_every_claim_found_at_start_is_taken_back_at_once(
    sqlite_url: str, smtp: FakeSMTPServer, clock: FakeClock, outbox_factory: OutboxFactory
) -> None:
    """SQLite: the file is one instance's, so whoever claimed a row is dead."""
    harness = Harness(sqlite_url, smtp, clock, outbox_factory)
    worker, outbox = harness.worker(instance_id="new-name", poll_interval=60)
    try:
        message = new_message()
        outbox.insert(message)
        outbox.claim([message.id], "old-name", 600)
        worker.start()
        wait_until(lambda: status(outbox, message.id) == ("sent", 2), what="redelivered")
    finally:
        worker.stop(5)


def test_start_reclaims_expired_leases_before_loading_the_backlog(
    harness: Harness, clock: FakeClock
) -> None:
    worker, outbox = harness.worker(poll_interval=60)  # only start() can deliver it
    message = new_message()
    outbox.insert(message)
    outbox.claim([message.id], "dead-process", 10)
    clock.advance(11)
    worker.start()
    wait_until(lambda: status(outbox, message.id) == ("sent", 2), what="delivered")


# -- stopping and starting again --------------------------------------------------------


def test_stop_leaves_unsent_messages_queued_and_a_restart_delivers_the_rest_once(
    harness: Harness, outbox_factory: OutboxFactory
) -> None:
    # 0.3 s per message: a whole batch of 8 would take 2.4 s.
    harness.smtp.add_fault(FaultRule(stage="data", action="delay", delay=0.3))
    worker, outbox = harness.worker(worker_concurrency=2)
    messages = [new_message(recipient=f"r{n}@example.com") for n in range(40)]
    for message in messages:
        outbox.insert(message)
    worker.start()
    harness.smtp.wait_for(2)

    started = time.monotonic()
    worker.stop(grace=5)
    # Only the sends in flight finish (0.3 s); the rest of each claimed batch is
    # handed back, where finishing the batches would take 2 s more.
    assert time.monotonic() - started < 1.5
    with pytest.raises(ShuttingDown):
        worker.reserve()
    statuses = Counter(status(outbox, m.id)[0] for m in messages)
    assert statuses["sending"] == 0
    assert statuses["queued"] > 0
    assert statuses["sent"] + statuses["queued"] == 40
    # Everything that went out was recorded: the sends in flight finished in the grace.
    assert sum(harness.received().values()) == statuses["sent"]
    for message in messages:
        sent_or_queued = status(outbox, message.id)
        assert sent_or_queued in {("sent", 1), ("queued", 0)}

    harness.smtp.clear_faults()
    second, second_outbox = harness.worker(outbox=outbox_factory(harness.url))
    second.start()
    harness.smtp.wait_for(40)
    wait_until(lambda: second_outbox.count_unfinished() == 0, what="the rest delivered")
    received = harness.received()
    assert set(received) == {m.rendered.message_id for m in messages}
    assert max(received.values()) == 1


@pytest.mark.parametrize("smtp", [{"chunking": False}], indirect=True)
def test_stop_after_the_grace_hands_back_a_send_stuck_before_its_final_dot(
    harness: Harness,
) -> None:
    """Stuck waiting for the 354: queued again at once, and never sent by this worker.
    (The DATA path: with CHUNKING the message's end goes with its envelope, so it
    is past its dot once written; tests/e2e/test_crash_recovery.py has that case.)"""
    harness.smtp.add_fault(FaultRule(stage="data", action="delay", delay=1.0, times=1))
    worker, outbox = harness.worker(worker_concurrency=1)
    message = new_message()
    outbox.insert(message)
    worker.start()
    wait_until(lambda: harness.smtp.stats()["faults_fired"] == 1, what="send stuck")
    started = time.monotonic()
    worker.stop(grace=0.2)
    assert time.monotonic() - started < 0.9  # the stuck send needs 1 s
    assert status(outbox, message.id) == ("queued", 0)
    assert outbox.due_ids(10) == [message.id]
    # The 354 comes; the thread drops the connection instead of sending the body.
    wait_until(lambda: harness.smtp.stats()["active_connections"] == 0, what="connection dropped")
    assert harness.smtp.messages() == []
    assert status(outbox, message.id) == ("queued", 0)


def test_stop_after_the_grace_leaves_a_send_past_its_final_dot_in_sending(
    harness: Harness,
) -> None:
    """Stuck waiting for the reply to the dot: the relay may have it, so it stays
    claimed; when the reply comes after all, its outcome is still written."""
    harness.smtp.add_fault(FaultRule(stage="message", action="delay", delay=1.0, times=1))
    worker, outbox = harness.worker(worker_concurrency=1)
    message = new_message()
    outbox.insert(message)
    worker.start()
    wait_until(lambda: harness.smtp.stats()["faults_fired"] == 1, what="send stuck")
    started = time.monotonic()
    worker.stop(grace=0.2)
    assert time.monotonic() - started < 0.9
    assert status(outbox, message.id) == ("sending", 1)
    wait_until(lambda: status(outbox, message.id) == ("sent", 1), what="late send recorded")


def test_start_twice_is_an_error(harness: Harness) -> None:
    worker, _ = harness.worker()
    worker.start()
    with pytest.raises(RuntimeError):
        worker.start()


# -- backpressure ---------------------------------------------------------------------------


def test_backlog_bound_counts_queued_and_retrying_messages_and_raises_queue_full(
    harness: Harness,
) -> None:
    harness.smtp.add_fault(FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 no"))
    worker, outbox = harness.worker(queue_maxsize=3)
    for _ in range(2):
        outbox.insert(new_message())
    worker.start()
    assert worker.backlog == 2  # initialised from the database
    worker.reserve()
    assert worker.backlog == 3
    with pytest.raises(QueueFull) as full:
        worker.reserve()
    assert full.value.retry_after >= 1
    worker.release()  # the insert failed: the slot comes back
    worker.reserve()
    accept_ok = new_message()
    outbox.insert(accept_ok)
    worker.enqueue(accept_ok.id)
    # All three are waiting to retry now and still count.
    wait_until(
        lambda: all(s == ("queued", 1) for s in map(lambda i: status(outbox, i), [accept_ok.id])),
        what="retrying",
    )
    with pytest.raises(QueueFull):
        worker.reserve()


def test_retry_after_follows_the_recent_drain_rate(harness: Harness, clock: FakeClock) -> None:
    worker, outbox = harness.worker(queue_maxsize=100)
    worker.start()
    for _ in range(10):
        accept(worker, outbox, new_message())
    wait_until(lambda: worker.backlog == 0, what="10 delivered")
    harness.smtp.add_fault(FaultRule(stage="connect", action="delay", delay=0.5))
    for _ in range(100):
        worker.reserve()
    with pytest.raises(QueueFull) as full:
        worker.reserve()
    # 10 finished in the last 10 s: 1/s; a tenth of the bound (10) drains in 10 s.
    assert full.value.retry_after == 10
    clock.advance(11)  # nothing finished lately: the rate is unknown
    with pytest.raises(QueueFull) as full:
        worker.reserve()
    assert full.value.retry_after == 5
    for _ in range(100):
        worker.release()


def test_scheduler_resyncs_the_backlog_from_the_database(harness: Harness) -> None:
    """Rows another instance accepted count against the shared bound."""
    harness.smtp.add_fault(FaultRule(stage="rcpt", action="reply", code=451, message="4.3.0 no"))
    worker, outbox = harness.worker()
    worker.resync_interval = 0
    worker.start()
    assert worker.backlog == 0
    for _ in range(3):
        outbox.insert(new_message())  # behind this worker's back
    wait_until(lambda: worker.backlog == 3, what="resynced")


# -- robustness ------------------------------------------------------------------------------


class FlakySender(WrappingSender):
    """Raises an unexpected exception on its first send, then behaves."""

    def __init__(self, inner: Sender) -> None:
        super().__init__(inner)
        self.calls = 0

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the sender")
        return super().send(message, before_dot, next_message=next_message)


def test_an_unexpected_exception_is_a_temporary_failure_and_the_thread_lives_on(
    harness: Harness, clock: FakeClock
) -> None:
    settings = harness.settings()
    senders: list[FlakySender] = []

    def factory() -> Sender:
        senders.append(FlakySender(mailer.SMTPConnection(settings)))
        return senders[-1]

    worker, outbox = harness.worker(worker_concurrency=1, sender_factory=factory, batch_size=1)
    worker.start()
    first, second = new_message(), new_message()
    accept(worker, outbox, first)
    wait_until(lambda: status(outbox, first.id) == ("queued", 1), what="first retried")
    record = outbox.get(first.id)
    assert record is not None
    assert record.last_error == "internal error: RuntimeError"
    accept(worker, outbox, second)
    wait_until(lambda: status(outbox, second.id) == ("sent", 1), what="second sent")
    clock.advance(11)
    wait_until(lambda: status(outbox, first.id) == ("sent", 2), what="first sent")
    assert len(senders) == 1  # the same thread and sender went on


def test_a_failing_sender_factory_does_not_kill_the_thread(harness: Harness) -> None:
    settings = harness.settings()
    calls = 0

    def factory() -> Sender:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("no sender today")
        return mailer.SMTPConnection(settings)

    worker, outbox = harness.worker(worker_concurrency=1, sender_factory=factory)
    worker.start()
    message = new_message()
    accept(worker, outbox, message)
    wait_until(lambda: status(outbox, message.id) == ("sent", 1), what="sent")
    assert calls == 2


class ClockSender(WrappingSender):
    """Each send takes `seconds` of fake time (a very slow relay)."""

    def __init__(self, inner: Sender, clock: FakeClock, seconds: float) -> None:
        super().__init__(inner)
        self.clock, self.seconds = clock, seconds

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        self.clock.advance(self.seconds)
        return super().send(message, before_dot, next_message=next_message)


def test_a_batch_hands_back_what_it_cannot_send_within_half_its_lease(
    harness: Harness, clock: FakeClock
) -> None:
    settings = harness.settings()
    handed_back: list[int] = []

    class CountingOutbox(Outbox):
        def unclaim(self, claimed: Any, owner: str) -> int:
            handed_back.append(len(claimed))
            return super().unclaim(claimed, owner)

    def factory() -> Sender:
        return ClockSender(mailer.SMTPConnection(settings), clock, seconds=20)

    outbox = CountingOutbox(harness.outbox_factory(harness.url).engine, clock=clock)
    worker, _ = harness.worker(worker_concurrency=1, sender_factory=factory, outbox=outbox)
    messages = [new_message() for _ in range(3)]
    for message in messages:
        outbox.insert(message)
    worker.start()
    wait_until(lambda: outbox.count_unfinished() == 0, what="all sent")
    # Each batch sent one (20 s of a 30 s lease) and handed the others back unsent,
    # without counting an attempt for them.
    assert handed_back == [2, 1]
    assert [status(outbox, m.id) for m in messages] == [("sent", 1)] * 3
    assert max(harness.received().values()) == 1


class FlakyOutbox(Outbox):
    """The database is away at start, for the first claim and the first outcome write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = {"claim": 1, "record_outcomes": 1, "reclaim_expired_leases": 2}

    def _fail(self, name: str) -> None:
        if self.failures[name]:
            self.failures[name] -= 1
            raise DatabaseUnavailable(f"{name}: database is locked")

    def claim(self, ids: Any, owner: str, lease_seconds: float) -> Any:
        self._fail("claim")
        return super().claim(ids, owner, lease_seconds)

    def record_outcomes(self, outcomes: Any, **kwargs: Any) -> None:
        self._fail("record_outcomes")
        super().record_outcomes(outcomes, **kwargs)

    def reclaim_expired_leases(self) -> int:
        self._fail("reclaim_expired_leases")  # at start() and in the first scheduler pass
        return super().reclaim_expired_leases()


def test_delivery_pauses_while_the_database_is_away_and_records_once_it_is_back(
    harness: Harness, clock: FakeClock
) -> None:
    engine = harness.outbox_factory(harness.url).engine
    outbox = FlakyOutbox(engine, clock=clock)
    waiting = new_message()
    outbox.insert(waiting)  # start() cannot load it: the scheduler must
    worker, _ = harness.worker(outbox=outbox)
    worker.start()
    message = new_message()
    accept(worker, outbox, message)
    wait_until(lambda: status(outbox, message.id) == ("sent", 1), what="sent")
    wait_until(lambda: status(outbox, waiting.id) == ("sent", 1), what="backlog sent")
    assert outbox.failures == {"claim": 0, "record_outcomes": 0, "reclaim_expired_leases": 0}
    assert harness.received()[message.rendered.message_id] == 1
    assert len(outbox.attempts(message.id)) == 1


class CallCountingOutbox(Outbox):
    """Counts the delivery path's claims and outcome writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def claim(self, ids: Any, owner: str, lease_seconds: float) -> Any:
        self.calls["claim"] += 1
        return super().claim(ids, owner, lease_seconds)

    def record_outcomes(self, outcomes: Any, **kwargs: Any) -> None:
        self.calls["record_outcomes"] += 1
        super().record_outcomes(outcomes, **kwargs)

    def record_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["record_and_claim"] += 1
        return super().record_and_claim(*args, **kwargs)


class SlowWritingOutbox(CallCountingOutbox):
    """Acceptance writes take 50 ms: far longer than the next envelope on loopback."""

    def record_acceptances(self, outcomes: Any, held: Any = None) -> None:
        time.sleep(0.05)
        super().record_acceptances(outcomes, held)


class DotWatchingSender(WrappingSender):
    """At each final dot, notes whether every message this connection sent before
    has its acceptance recorded (a sent attempt row)."""

    def __init__(self, inner: Sender, outbox: Outbox, ids: dict[str, str]) -> None:
        super().__init__(inner)
        self.outbox = outbox
        self.ids = ids  # Message-ID -> our id
        self.sent: list[str] = []
        self.earlier_recorded: list[bool] = []
        self.announced: list[str | None] = []  # the next message named with each send

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        def watch() -> None:
            assert before_dot is not None
            before_dot()
            kinds = [[a["outcome"] for a in self.outbox.attempts(id_)] for id_ in self.sent]
            self.earlier_recorded.append(all(k == ["sent"] for k in kinds))

        self.announced.append(self.ids[next_message.message_id] if next_message else None)
        result = super().send(message, watch, next_message=next_message)
        self.sent.append(self.ids[message.message_id])
        return result


def test_each_acceptance_is_recorded_before_the_connection_sends_the_next_final_dot(
    harness: Harness, clock: FakeClock
) -> None:
    """After a crash at most one message per connection can go twice: the one whose
    250 was not yet recorded. The messages' rows are still written a batch at a
    time, with the claim of the next batch."""
    outbox = SlowWritingOutbox(harness.outbox_factory(harness.url).engine, clock=clock)
    messages = [new_message() for _ in range(6)]
    ids = {m.rendered.message_id: m.id for m in messages}
    for message in messages:
        outbox.insert(message)
    senders: list[DotWatchingSender] = []

    def watching() -> Sender:
        senders.append(DotWatchingSender(mailer.SMTPConnection(harness.settings()), outbox, ids))
        return senders[-1]

    worker, _ = harness.worker(
        outbox=outbox, sender_factory=watching, worker_concurrency=1, batch_size=3
    )
    worker.start()  # loads all six into the queue before the thread starts
    wait_until(lambda: outbox.count_unfinished() == 0, what="all sent")
    wait_until(lambda: worker.backlog == 0, what="backlog counted down")
    [sender] = senders
    assert sender.earlier_recorded == [True] * 6
    # Within a batch each envelope went ahead with the previous final dot.
    assert sender.announced == [*sender.sent[1:3], None, *sender.sent[4:6], None]
    assert outbox.calls["claim"] == 1
    assert outbox.calls["record_and_claim"] == 1
    assert [status(outbox, m.id) for m in messages] == [("sent", 1)] * 6
    assert set(harness.received().values()) == {1}


def test_scheduler_purges_old_keys_and_bodies(harness: Harness, clock: FakeClock) -> None:
    worker, outbox = harness.worker(retention_seconds=60, idempotency_ttl_seconds=60)
    worker.purge_interval = 0
    worker.start()
    message = new_message(scope="fp:key")
    accept(worker, outbox, message)
    wait_until(lambda: status(outbox, message.id)[0] == "sent", what="sent")
    assert outbox.raw(message.id) is not None
    clock.advance(61)
    wait_until(lambda: outbox.raw(message.id) is None, what="body purged")
    assert outbox.find_idempotent("fp:key") is None


def test_scheduler_checkpoints_the_sqlite_wal_every_poll(harness: Harness) -> None:
    """The delivery threads' and requests' commits leave the WAL to the scheduler
    (db/engine.py: SQLITE_AUTOCHECKPOINT_PAGES)."""
    worker, outbox = harness.worker()
    checkpoints = threading.Semaphore(0)
    checkpoint = outbox.checkpoint

    def counted() -> None:
        checkpoint()
        checkpoints.release()

    outbox.checkpoint = counted  # type: ignore[method-assign]
    worker.start()
    for _ in range(3):
        assert checkpoints.acquire(timeout=5), "the scheduler did not checkpoint"


# -- the scheduler's due query ------------------------------------------------------------------


class GatedSender(WrappingSender):
    """Sends through a real connection once `gate` is set."""

    def __init__(self, inner: Sender, gate: threading.Event) -> None:
        super().__init__(inner)
        self.gate = gate

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        self.gate.wait(10)
        return super().send(message, before_dot, next_message=next_message)


def count_due_queries(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Outbox.due_ids calls (one list item per call: its limit)."""
    calls: list[int] = []
    real = outbox.due_ids

    def spy(limit: int) -> list[str]:
        calls.append(limit)
        return real(limit)

    monkeypatch.setattr(outbox, "due_ids", spy)
    return calls


def test_scheduler_skips_the_due_query_while_every_message_is_queued_or_in_flight_here(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog wholly in memory is not re-read every poll; a row it does not know
    of (another instance's, seen through the backlog resync) makes it look again."""
    gate = threading.Event()
    settings = harness.settings()
    worker, outbox = harness.worker(
        worker_concurrency=1,
        sender_factory=lambda: GatedSender(mailer.SMTPConnection(settings), gate),
    )
    worker.resync_interval = 3600
    backlog = [new_message(recipient=f"b{n}@example.com") for n in range(40)]
    for message in backlog:
        outbox.insert(message)
    calls = count_due_queries(outbox, monkeypatch)
    worker.start()
    assert calls  # loading the backlog at start reads it
    loaded = len(calls)
    time.sleep(0.3)  # 15 polls
    assert len(calls) == loaded

    behind = new_message(recipient="behind@example.com")
    outbox.insert(behind)  # not enqueued here
    worker.resync_interval = 0  # the next resync counts it
    wait_until(lambda: len(calls) > loaded, what="a due query")
    gate.set()
    harness.smtp.wait_for(41)
    wait_until(lambda: outbox.count_unfinished() == 0, what="all recorded")
    assert set(harness.received()) == {m.rendered.message_id for m in [*backlog, behind]}


def test_a_retry_of_ours_comes_back_when_due_without_a_due_query(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.smtp.add_fault(
        FaultRule(stage="rcpt", action="reply", code=451, message="4.7.1 Try later", times=1)
    )
    worker, outbox = harness.worker(worker_concurrency=1)
    worker.resync_interval = 3600
    worker.start()
    calls = count_due_queries(outbox, monkeypatch)  # after the start's pass
    message = new_message()
    accept(worker, outbox, message)
    wait_until(lambda: status(outbox, message.id) == ("queued", 1), what="back to queued")
    time.sleep(0.1)
    assert status(outbox, message.id) == ("queued", 1)  # not offered before it is due
    clock.advance(10.0)
    wait_until(lambda: status(outbox, message.id) == ("sent", 2), what="retried and sent")
    assert calls == []


def test_a_message_the_accounting_misses_is_found_by_the_periodic_full_pass(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row inserted behind the worker's back, with no resync to count it."""
    worker, outbox = harness.worker()
    worker.resync_interval = 3600
    worker.full_pass_interval = 3600
    calls = count_due_queries(outbox, monkeypatch)
    worker.start()
    queries_at_start = len(calls)
    missed = new_message()
    outbox.insert(missed)
    time.sleep(0.2)
    assert status(outbox, missed.id) == ("queued", 0)  # no query: nothing unaccounted for
    assert len(calls) == queries_at_start
    worker.full_pass_interval = 0.05
    wait_until(lambda: status(outbox, missed.id) == ("sent", 1), what="found and sent")


def test_reclaimed_leases_make_the_scheduler_look_at_once(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead process's claim re-queued by the scheduler is offered in the same pass."""
    worker, outbox = harness.worker()
    worker.resync_interval = 3600
    worker.full_pass_interval = 3600
    worker.start()
    orphan = new_message()
    outbox.insert(orphan)
    assert [c.id for c in outbox.claim([orphan.id], "dead-process", 30)] == [orphan.id]
    calls = count_due_queries(outbox, monkeypatch)
    clock.advance(31)
    wait_until(lambda: status(outbox, orphan.id) == ("sent", 2), what="reclaimed and sent")
    assert calls


# -- adaptive concurrency -----------------------------------------------------------------


def test_connections_grow_from_a_few_to_worker_concurrency_while_a_backlog_waits(
    harness: Harness,
) -> None:
    worker, outbox = harness.worker(worker_concurrency=8)
    messages = [new_message() for _ in range(300)]
    for message in messages:
        outbox.insert(message)
    assert worker.concurrency.limit == 4  # a few to begin with
    worker.start()
    harness.smtp.wait_for(300)
    wait_until(lambda: outbox.count_unfinished() == 0, what="all recorded")
    assert worker.concurrency.limit == 8
    assert 4 < harness.smtp.stats()["connections"] <= 8
    assert max(harness.received().values()) == 1


def test_a_relay_refusing_connections_halves_the_limit_and_mail_still_flows(
    harness: Harness,
) -> None:
    harness.smtp.add_fault(FaultRule(stage="connect", code=421, message="4.7.0 too many", times=3))
    worker, outbox = harness.worker(worker_concurrency=8, smtp_backoff_base=0.0)
    messages = [new_message() for _ in range(40)]
    for message in messages:
        outbox.insert(message)
    # The limit right after each congestion signal (sampling it on a timer missed
    # the low point when deliveries regrew it within a few milliseconds).
    limits: list[int] = [worker.concurrency.limit]
    congested = worker.concurrency.congested

    def congested_and_noted() -> None:
        congested()
        limits.append(worker.concurrency.limit)

    worker.concurrency.congested = congested_and_noted  # type: ignore[method-assign]
    worker.start()
    wait_until(lambda: outbox.count_unfinished() == 0, what="all delivered")
    assert min(limits) <= 2  # 4 halved (once per event, however many threads saw it)
    assert set(harness.received().values()) == {1}
    assert len(harness.received()) == 40
