"""MailQueueWorker: the delivery threads and the scheduler over one Outbox.

A delivery thread takes one id from the WorkQueue (blocking, with a timeout so
that stop() is noticed), then a few more that are already waiting, claims them
in one statement under this instance's name (INSTANCE_ID) and sends each over
its own persistent connection. Each relay 250 goes into the AcceptanceLog at
once; the next message of the batch has its envelope sent already, with the
previous final dot (Sender.send's `next_message`), and its own final dot goes
only once that acceptance is recorded (HeldClaims; the thread writes it itself, with every
other one waiting, if nobody has), so a crash re-sends at most one message per
connection. The batch's outcomes are written in the transaction that claims
the next batch. A temporary failure puts the message back in the
database as queued with a retry time (the RetryPolicy's), and the thread goes
straight on to the next message: no delivery thread ever sleeps through a
backoff. The scheduler thread re-queues retries when they are due, scheduled
messages whose send_at has come and messages whose lease expired (a dead
instance's), re-syncs the Backlog and purges.

At start-up the worker takes back what its previous process left in `sending`,
at once (the InstanceLock makes that safe); at stop, what has not reached its
final dot goes back to `queued`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from service.acceptance_log import AcceptanceLog
from service.backlog import Backlog
from service.concurrency import ConcurrencyLimit, is_congestion
from service.errors import (
    ClaimReleased,
    DatabaseUnavailable,
    DeliveryError,
    QueueFull,
    ShuttingDown,
    TemporaryDeliveryError,
)
from service.held_claims import HeldClaims, LeaseRunningOut
from service.retry import RetryPolicy
from service.types import ClaimedMessage, Outcome, Sender, SenderFactory
from service.work_queue import WorkQueue

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Outbox
    from service.metrics import Metrics

__all__ = ["MailQueueWorker", "QueueFull", "Sender", "ShuttingDown"]

log = logging.getLogger(__name__)

# How many ids a delivery thread claims at once; their outcomes are written with
# the claim of the next batch, one commit per batch. (Acceptances are recorded
# per message, grouped across threads by the AcceptanceLog.)
DEFAULT_BATCH_SIZE = 8
# How long a delivery thread blocks on the queue before looking at the stop flag.
_GET_TIMEOUT = 0.1
# The scheduler's slower chores, in seconds.
_RESYNC_INTERVAL = 2.0
_PURGE_INTERVAL = 60.0
# How many already-queued ids the scheduler's due query may look past.
_LOOK_PAST = 1000
# The scheduler skips the due query while it can account for every unfinished message
# in memory; this often it runs the query anyway, in case the accounting missed one.
_FULL_PASS_INTERVAL = 30.0


class MailQueueWorker:
    """Delivery threads and a scheduler over one Outbox, bounded by a Backlog."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        *,
        sender_factory: SenderFactory,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._sender_factory = sender_factory
        self._clock = clock
        self._retry = RetryPolicy.from_settings(settings, rng)
        self._metrics = metrics
        self._batch_size = max(1, batch_size)
        self._stopping = threading.Event()
        self._work = WorkQueue(settings.queue_maxsize, self._stopping)
        self._backlog = Backlog(settings.queue_maxsize, clock)
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        self._started = False
        # The scheduler's slower chores, in seconds (attributes so tests can shorten them).
        self.resync_interval = _RESYNC_INTERVAL
        self.purge_interval = _PURGE_INTERVAL
        self.full_pass_interval = _FULL_PASS_INTERVAL
        self._last_full_pass: float | None = None  # time.monotonic() of the last due query
        self._owner = settings.instance_name
        self._held: list[HeldClaims] = []
        self.concurrency = ConcurrencyLimit(settings.worker_concurrency)
        self._senders: list[Sender | None] = [None] * settings.worker_concurrency
        self._acceptances = AcceptanceLog(outbox, retry_interval=settings.poll_interval)

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start WORKER_CONCURRENCY delivery threads and the scheduler; load the backlog."""
        if self._started:
            raise RuntimeError("MailQueueWorker.start() called twice")
        self._started = True
        try:
            # SQLite: one instance per file (the InstanceLock), so every claim is ours.
            self._outbox.take_back_claims(None if self._outbox.is_sqlite else self._owner)
            self._outbox.reclaim_expired_leases()
            self._backlog.resync(self._outbox.count_unfinished())
            self._fill_queue()
        except DatabaseUnavailable:
            # The scheduler retries all of this every poll; accepting can wait for it.
            log.exception("database unavailable at start; the scheduler will retry")
        for n in range(self._settings.worker_concurrency):
            held = HeldClaims(self._acceptances, self._clock)
            self._held.append(held)
            thread = threading.Thread(
                target=self._deliver_loop,
                args=(n, held),
                name=f"mail-delivery-{n}",
                daemon=True,  # a send stuck past the grace period must not block exit
            )
            thread.start()
            self._threads.append(thread)
        self._scheduler = threading.Thread(
            target=self._schedule_loop, name="mail-scheduler", daemon=True
        )
        self._scheduler.start()

    def stop(self, grace: float) -> None:
        """Stop taking work; let deliveries in flight finish within `grace` seconds;
        then hand back, as queued, every claim that has not reached its final dot.
        Only messages past it stay in `sending`, for the next start to take back."""
        deadline = time.monotonic() + grace
        self._stopping.set()
        threads = [*self._threads, *([self._scheduler] if self._scheduler else [])]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        back = [message for held in self._held for message in held.take_back()]
        self._unclaim(back)
        if stuck:
            log.warning(
                "delivery still in flight after %.1fs grace: %s; %d claim(s) not at their "
                "final dot handed back",
                grace,
                ", ".join(stuck),
                len(back),
            )
        # The acceptances of messages the relay took must be written whatever the
        # grace left: otherwise the next start sends them again.
        self._acceptances.close(max(1.0, deadline - time.monotonic()))
        self._work.clear()

    # -- the accept path ------------------------------------------------------------

    def reserve(self, count: int = 1) -> None:
        """Take `count` slots of the backlog bound before inserting, all or none.
        Raises QueueFull / ShuttingDown."""
        if self._stopping.is_set():
            raise ShuttingDown("the service is shutting down")
        self._backlog.reserve(count)

    def release(self, count: int = 1) -> None:
        """Give back slots whose insert failed."""
        self._backlog.release(count)

    def enqueue(self, message_id: str) -> None:
        """Hand a committed message's id to the delivery threads (never blocks)."""
        self._backlog.committed()
        self._work.offer(message_id)

    @property
    def backlog(self) -> int:
        """Accepted and unfinished messages this instance counts against QUEUE_MAXSIZE."""
        return self._backlog.count

    @property
    def queue_depth(self) -> int:
        return self._work.depth

    # -- delivery threads -----------------------------------------------------------

    @property
    def connections_open(self) -> int:
        """Delivery connections open now (a gauge: read without a lock)."""
        return sum(1 for sender in self._senders if sender is not None and sender.is_open)

    def _deliver_loop(self, slot: int, held: HeldClaims) -> None:
        sender: Sender | None = None
        try:
            while not self._stopping.is_set():
                if not self.concurrency.admits(slot):
                    # Over the relay's limit for now: park, with no connection open.
                    self._close_sender(sender)
                    sender = self._senders[slot] = None
                    self.concurrency.wait_admitted(slot, _GET_TIMEOUT)
                    continue
                ids = self._work.take(self._batch_size, _GET_TIMEOUT)
                if not ids:
                    continue
                try:
                    if sender is None:
                        sender = self._senders[slot] = self._sender_factory()
                    self._deliver_batch(ids, held, sender)
                except Exception:
                    # Never let a thread die: whatever was claimed and not recorded
                    # comes back when its lease expires; a fresh sender next time.
                    log.exception("delivery batch failed")
                    self._close_sender(sender)
                    sender = self._senders[slot] = None
                    self._stopping.wait(self._settings.poll_interval)
                finally:
                    self._work.forget(ids)
        finally:
            self._close_sender(sender)

    @staticmethod
    def _close_sender(sender: Sender | None) -> None:
        if sender is None:
            return
        try:
            sender.close()
        except Exception:
            log.exception("closing an SMTP sender failed")

    def _deliver_batch(self, ids: list[str], held: HeldClaims, sender: Sender) -> None:
        """Claim `ids`, send them, then keep going while the queue has more: each
        batch's outcomes are written in the same transaction that claims the next."""
        if self._stopping.is_set():
            return
        claimed: list[ClaimedMessage] = []
        try:
            claimed = self._outbox.claim(ids, self._owner, self._settings.lease_seconds)
        except DatabaseUnavailable:
            # Delivery pauses while the database is away; the scheduler offers
            # these ids again once it answers.
            log.warning("database unavailable; delivery paused")
            self._stopping.wait(self._settings.poll_interval)
            return
        finally:
            self._work.claimed(ids, len(claimed))
        while claimed:
            next_claimed: list[ClaimedMessage] = []
            try:
                next_claimed = self._send_claimed(claimed, held, sender)
            finally:
                self._work.landed(len(claimed))
            claimed = next_claimed

    def _send_claimed(
        self, claimed: list[ClaimedMessage], held: HeldClaims, sender: Sender
    ) -> list[ClaimedMessage]:
        """Send a claimed batch, each acceptance recorded before the next final dot;
        record the outcomes and claim the next batch (when one is waiting) together.
        Returns that next batch, counted in flight."""
        # Start a send only while at least half the lease is left, and let its dot go
        # only before nine tenths: a send never overlaps the moment the scheduler (or
        # another instance) may hand the message to someone else.
        now, lease = self._clock(), self._settings.lease_seconds
        held.load(claimed, dot_deadline=now + lease * 0.9)
        lease_end = now + lease / 2
        outcomes: list[Outcome] = []
        unsent: list[ClaimedMessage] = []
        while (message := held.next()) is not None:
            if self._stopping.is_set():
                unsent = held.take_back()  # this message and the rest
                break
            if self._clock() >= lease_end:
                # The lease ran out while earlier ones were sent (a slow relay):
                # hand the rest back rather than risk a duplicate.
                unsent = [message, *held.rest()]
                break
            try:
                outcome = self._attempt(message, sender, held)
            except LeaseRunningOut:
                # Still claimed: it comes back when its lease expires.
                log.warning("abandoned %s before its final dot: lease ran out", message.id)
                continue
            if outcome is None:
                continue  # taken back by stop(), which queued it again
            if outcome.error is None:
                held.after(self._acceptances.add(outcome))
            outcomes.append(outcome)
        if unsent or self._stopping.is_set():
            # No next batch: stopping, or a relay this slow gains nothing from it.
            self._record(outcomes)
            self._unclaim(unsent)
            return []
        return self._record_and_claim(outcomes)

    def _record_and_claim(self, outcomes: list[Outcome]) -> list[ClaimedMessage]:
        ids = self._work.take_ready(self._batch_size)
        if not ids:
            self._record(outcomes)
            return []
        claimed: list[ClaimedMessage] = []
        try:
            with self._acceptances.writing() as accepted:
                claimed = self._outbox.record_and_claim(
                    outcomes, ids, self._owner, self._settings.lease_seconds, accepted=accepted
                )
        except DatabaseUnavailable:
            # Neither happened. The outcomes must be written (the retrying path);
            # the ids are offered again by the scheduler, as after a failed claim.
            log.warning("database unavailable; recording alone, the next batch waits")
            self._record(outcomes)
            return []
        finally:
            self._work.claimed(ids, len(claimed))
        self._recorded(outcomes)
        return claimed

    def _attempt(self, message: ClaimedMessage, sender: Sender, held: HeldClaims) -> Outcome | None:
        """One attempt of one message, and what the retry policy makes of it; None
        when stop() took the message back before its final dot (it is queued again)."""
        started = self._clock()
        began = time.perf_counter()
        error: DeliveryError | None = None
        rejected = []
        try:
            following = held.peek()
            result = sender.send(
                message.rendered,
                held.before_dot,
                next_message=following.rendered if following is not None else None,
            )
            rejected = list(result.rejected)
        except LeaseRunningOut:
            raise
        except ClaimReleased:
            return None
        except DeliveryError as exc:
            error = exc
        except Exception as exc:
            # A bug or an unclassified failure: retry it like a temporary error,
            # so the message is neither lost nor failed by our own fault.
            log.exception("unexpected error while sending %s", message.id)
            error = TemporaryDeliveryError(f"internal error: {type(exc).__name__}")
        finished = self._clock()
        if error is not None and held.released:
            return None  # refused in its envelope after stop() had handed it back
        if error is None:
            self.concurrency.delivered(backlog=self._work.depth > 0)
        elif is_congestion(error):
            self.concurrency.congested()
        decision = self._retry.decide(message.attempt, error)
        retry_at = self._clock() + decision.delay if decision.action == "retry" else None
        if error is not None:
            self._log_failure(message, error, decision.delay if retry_at is not None else None)
        outcome = {"done": "sent", "retry": "retried", "fail": "failed"}[decision.action]
        if self._metrics is not None:
            code = error.code if error is not None else None
            self._metrics.record_delivery("async", outcome, code, time.perf_counter() - began)
        return Outcome(
            id=message.id,
            attempt=message.attempt,
            error=error,
            rejected=rejected,
            retry_at=retry_at,
            started_at=started,
            finished_at=finished,
        )

    @staticmethod
    def _log_failure(message: ClaimedMessage, error: DeliveryError, delay: float | None) -> None:
        extra = {"message_id": message.rendered.message_id}
        if delay is not None:
            log.info(
                "temporary failure of %s (attempt %d), retry in %.1fs: %s",
                message.id,
                message.attempt,
                delay,
                error.reply,
                extra=extra,
            )
        else:
            log.warning(
                "delivery of %s failed after %d attempt(s): %s",
                message.id,
                message.attempt,
                error.reply,
                extra=extra,
            )

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Write the batch's outcomes, retrying while the database is away.

        Giving up would let the leases expire; until stop() has begun this keeps
        trying (then the take-back decides: an acceptance recorded is sent).
        """
        if not outcomes:
            return
        while True:
            try:
                with self._acceptances.writing() as accepted:
                    self._outbox.record_outcomes(outcomes, accepted=accepted)
                break
            except DatabaseUnavailable:
                log.warning("could not record %d outcome(s); retrying", len(outcomes))
                if self._stopping.wait(self._settings.poll_interval):
                    return
        self._recorded(outcomes)

    def _recorded(self, outcomes: Sequence[Outcome]) -> None:
        """Account for written outcomes: remember the retries, count the finished."""
        finished = 0
        for outcome in outcomes:
            if outcome.status == "queued" and outcome.retry_at is not None:
                self._work.add_retry(outcome.retry_at, outcome.id)
            else:
                finished += 1
        self._backlog.finish(finished)

    def _unclaim(self, claimed: Sequence[ClaimedMessage]) -> None:
        """Hand claimed, unsent messages back: queued, due now, offered again."""
        if not claimed:
            return
        try:
            self._outbox.unclaim(claimed, self._owner)
        except DatabaseUnavailable:
            log.warning(
                "could not hand back %d claimed message(s); they return when their lease expires",
                len(claimed),
            )
            return
        for message in claimed:
            self._work.offer(message.id)

    # -- scheduler --------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        last_resync = last_purge = time.monotonic()
        while not self._stopping.wait(self._settings.poll_interval):
            try:
                reclaimed = self._outbox.reclaim_expired_leases()
                released = self._outbox.release_scheduled()
                if released:
                    # They count toward QUEUE_MAXSIZE from now on.
                    self._backlog.resync(self._outbox.count_unfinished())
                self._fill_queue(force=reclaimed > 0 or released > 0)
                now = time.monotonic()
                if now - last_resync >= self.resync_interval:
                    last_resync = now
                    self._backlog.resync(self._outbox.count_unfinished())
                if now - last_purge >= self.purge_interval:
                    last_purge = now
                    self._purge()
                self._outbox.checkpoint()
            except DatabaseUnavailable as exc:
                # Expected while the database restarts: no traceback, try again next poll.
                log.warning("scheduler pass skipped, database unavailable: %s", exc)
            except Exception:
                # A bug: log it with its traceback and try again next poll.
                log.exception("scheduler pass failed")

    def _fill_queue(self, *, force: bool = False) -> None:
        """Offer due ids (retries whose time has come, reclaimed leases, a backlog
        that did not fit) up to the room in the queue.

        This instance's own retries come from memory. The due query runs only when
        some unfinished message is not accounted for here (waiting in the queue, in
        flight, or a retry of ours): with the whole backlog already queued, reading
        every due row each poll only to find each one pending would take the GIL
        from the delivery threads. A message this accounting misses (it is kept in
        counts, not ids) is found by the unconditional pass every
        full_pass_interval seconds.
        """
        room = self._work.room
        if room <= 0 or self._stopping.is_set():
            return
        for message_id in self._work.due_retries(self._clock()):
            # Refused only when the queue is full: then the count below misses it.
            self._work.offer(message_id)
        # The stored count first: a message committed between the two reads is then
        # counted as known too, instead of looking unaccounted for and sending this
        # pass through the whole due query.
        stored = self._backlog.stored
        waiting, known = self._work.known()
        unaccounted = stored - known
        started = time.monotonic()
        if (
            not force
            and unaccounted <= 0
            and self._last_full_pass is not None
            and started - self._last_full_pass < self.full_pass_interval
        ):
            return
        self._last_full_pass = started
        # Ids already waiting here are among the oldest due, so they come first;
        # look past a bounded number of them. With a larger local backlog, what
        # lies beyond is found once the queue has drained (oldest due first).
        limit = room + min(waiting, _LOOK_PAST)
        for message_id in self._outbox.due_ids(limit):
            if not self._work.offer(message_id) and self._work.full():
                break

    def _purge(self) -> None:
        now = self._clock()
        retention = self._settings.retention_seconds
        self._outbox.purge(
            idempotency_before=now - self._settings.idempotency_ttl_seconds,
            bodies_sent_before=now - retention if retention is not None else None,
        )
