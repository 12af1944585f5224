"""MailQueueWorker: a bounded in-memory queue of ids and the delivery threads.

The database is the truth; the queue.Queue only carries ids so that memory
stays flat with a large backlog. A scheduler thread re-queues retries when
they are due and messages whose lease expired (a dead process's).

A delivery thread takes one id (blocking, with a timeout so that stop() is
noticed), then a few more that are already waiting, claims them in one
statement, sends each over its own persistent SMTP connection and records the
outcomes in one transaction. A temporary failure puts the message back in the
database as queued with a retry time, and the thread goes straight on to the
next message: no delivery thread ever sleeps through a backoff.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from service import mailer
from service.db import ClaimedMessage, DatabaseUnavailable, Outcome

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Outbox
    from service.mailer import RenderedMessage, SendResult
    from service.metrics import Metrics

__all__ = ["MailQueueWorker", "QueueFull", "Sender", "ShuttingDown"]

log = logging.getLogger(__name__)

# How many ids a delivery thread claims and records at once. Batching turns
# two commits per message into two per batch; a small batch keeps what a
# crash can duplicate (sent but not yet recorded) small too.
DEFAULT_BATCH_SIZE = 8
# How long a delivery thread blocks on the queue before looking at the stop flag.
_GET_TIMEOUT = 0.1
# The scheduler's slower chores, in seconds.
_RESYNC_INTERVAL = 2.0
_PURGE_INTERVAL = 60.0
# Retry-After bounds and the window over which the drain rate is measured.
_RETRY_AFTER_MIN = 1
_RETRY_AFTER_MAX = 60
_RETRY_AFTER_UNKNOWN = 5  # nothing finished lately (relay down?): come back soon, cheaply
_RATE_WINDOW = 10.0
# How many already-queued ids the scheduler's due query may look past.
_LOOK_PAST = 1000
# The scheduler skips the due query while it can account for every unfinished message
# in memory; this often it runs the query anyway, in case the accounting missed one.
_FULL_PASS_INTERVAL = 30.0


class QueueFull(Exception):
    """The backlog bound (QUEUE_MAXSIZE) is reached; answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The worker is stopping and takes no new work; answer 503."""


class Sender:
    """What a delivery thread sends with: one per thread (SMTPConnection satisfies it)."""

    def send(self, message: RenderedMessage) -> SendResult:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class MailQueueWorker:
    """Delivery threads and a scheduler over one Outbox.

    Backpressure: QUEUE_MAXSIZE bounds the async messages accepted and not yet
    finished (queued, sending, or waiting to retry). The count is kept in memory
    (+1 on reserve(), -1 on release() and when a message is sent or failed) and
    re-synced every few seconds from the database (count_unfinished() plus the
    reservations whose insert is still in progress). Because that count covers
    every row of the database, several instances sharing one database share one
    bound: between two re-syncs each instance can overshoot it by what it
    accepted itself in that interval, no more.
    """

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        *,
        sender_factory: Callable[[], Sender],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._sender_factory = sender_factory
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not security
        self._metrics = metrics
        self._batch_size = max(1, batch_size)
        self._maxsize = settings.queue_maxsize
        # The ids are what the queue carries; its bound matches the backlog bound,
        # so an accepted message always fits.
        self._queue: queue.Queue[str] = queue.Queue(maxsize=self._maxsize)
        # Ids waiting in the queue or being claimed, so the scheduler does not
        # queue one twice.
        self._pending: set[str] = set()
        # Claimed by this instance's delivery threads, outcome not yet recorded.
        self._in_flight = 0
        # Retries this instance recorded, (retry_at, id), earliest first: the scheduler
        # offers them when due without asking the database.
        self._retries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._backlog = 0
        self._reserving = 0  # reserve()d, neither enqueue()d nor release()d yet
        self._finished: deque[tuple[float, int]] = deque()  # (time, count) for the drain rate
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        self._started = False
        # The scheduler's slower chores, in seconds (attributes so tests can shorten them).
        self.resync_interval = _RESYNC_INTERVAL
        self.purge_interval = _PURGE_INTERVAL
        self.full_pass_interval = _FULL_PASS_INTERVAL
        self._last_full_pass: float | None = None  # time.monotonic() of the last due query
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start WORKER_CONCURRENCY delivery threads and the scheduler; load the backlog."""
        if self._started:
            raise RuntimeError("MailQueueWorker.start() called twice")
        self._started = True
        try:
            self._outbox.reclaim_expired_leases()
            with self._lock:
                self._backlog = self._outbox.count_unfinished()
            self._fill_queue()
        except DatabaseUnavailable:
            # The scheduler retries all of this every poll; accepting can wait for it.
            log.exception("database unavailable at start; the scheduler will retry")
        for n in range(self._settings.worker_concurrency):
            thread = threading.Thread(
                target=self._deliver_loop,
                args=(f"{self._owner_prefix}:{n}",),
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
        leave the rest queued in the database."""
        deadline = time.monotonic() + grace
        self._stopping.set()
        threads = [*self._threads, *([self._scheduler] if self._scheduler else [])]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            # Their messages stay in `sending` under a lease; the next start (or
            # another instance) takes them back when it expires.
            log.warning("delivery still in flight after %.1fs grace: %s", grace, ", ".join(stuck))
        # Forget the ids: they are all still queued in the database.
        with self._lock:
            self._pending.clear()
            self._retries.clear()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    # -- the accept path ------------------------------------------------------------

    def reserve(self) -> None:
        """Take one slot of the backlog bound before inserting. Raises QueueFull / ShuttingDown."""
        if self._stopping.is_set():
            raise ShuttingDown("the service is shutting down")
        with self._lock:
            if self._backlog >= self._maxsize:
                raise QueueFull(self._retry_after_locked())
            self._backlog += 1
            self._reserving += 1

    def release(self) -> None:
        """Give back a slot whose insert failed."""
        with self._lock:
            self._backlog = max(0, self._backlog - 1)
            self._reserving = max(0, self._reserving - 1)

    def enqueue(self, message_id: str) -> None:
        """Hand a committed message's id to the delivery threads (never blocks)."""
        with self._lock:
            # The reservation is now a row: count_unfinished() sees it from here on.
            self._reserving = max(0, self._reserving - 1)
        self._offer(message_id)

    @property
    def backlog(self) -> int:
        """Accepted and unfinished messages this instance counts against QUEUE_MAXSIZE."""
        return self._backlog

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _offer(self, message_id: str) -> bool:
        """Put an id in the queue unless it is there already or the queue is full.

        A full queue loses nothing: the row is queued in the database and the
        scheduler offers it again once there is room.
        """
        if self._stopping.is_set():
            return False
        with self._lock:
            if message_id in self._pending:
                return False
            self._pending.add(message_id)
        try:
            self._queue.put_nowait(message_id)
        except queue.Full:
            with self._lock:
                self._pending.discard(message_id)
            return False
        return True

    def _retry_after_locked(self) -> int:
        """Seconds until about a tenth of the backlog has drained at the recent rate."""
        now = self._clock()
        while self._finished and self._finished[0][0] < now - _RATE_WINDOW:
            self._finished.popleft()
        done = sum(count for _, count in self._finished)
        if done == 0:
            return _RETRY_AFTER_UNKNOWN
        rate = done / _RATE_WINDOW
        wanted = max(1, self._maxsize // 10)
        seconds = math.ceil(wanted / rate)
        return min(_RETRY_AFTER_MAX, max(_RETRY_AFTER_MIN, seconds))

    def _finish(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self._backlog = max(0, self._backlog - count)
            self._finished.append((self._clock(), count))

    # -- delivery threads -----------------------------------------------------------

    def _deliver_loop(self, owner: str) -> None:
        sender: Sender | None = None
        try:
            while not self._stopping.is_set():
                try:
                    first = self._queue.get(timeout=_GET_TIMEOUT)
                except queue.Empty:
                    continue
                ids = [first]
                while len(ids) < self._batch_size:
                    try:
                        ids.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if sender is None:
                        sender = self._sender_factory()
                    self._deliver_batch(ids, owner, sender)
                except Exception:
                    # Never let a thread die: whatever was claimed and not recorded
                    # comes back when its lease expires; a fresh sender next time.
                    log.exception("delivery batch failed")
                    self._close_sender(sender)
                    sender = None
                    self._stopping.wait(self._settings.poll_interval)
                finally:
                    with self._lock:
                        self._pending.difference_update(ids)
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

    def _deliver_batch(self, ids: list[str], owner: str, sender: Sender) -> None:
        """Claim `ids`, send them, then keep going while the queue has more: each
        batch's outcomes are written in the same transaction that claims the next."""
        if self._stopping.is_set():
            return
        claimed: list[ClaimedMessage] = []
        try:
            claimed = self._outbox.claim(ids, owner, self._settings.lease_seconds)
        except DatabaseUnavailable:
            # Delivery pauses while the database is away; the scheduler offers
            # these ids again once it answers.
            log.warning("database unavailable; delivery paused")
            self._stopping.wait(self._settings.poll_interval)
            return
        finally:
            # Claimed rows are in `sending` now and the rest are someone else's
            # or not due: either way the scheduler may offer these ids again.
            with self._lock:
                self._pending.difference_update(ids)
                self._in_flight += len(claimed)
        while claimed:
            next_claimed: list[ClaimedMessage] = []
            try:
                next_claimed = self._send_claimed(claimed, owner, sender)
            finally:
                with self._lock:
                    self._in_flight -= len(claimed)
            claimed = next_claimed

    def _take_ready(self) -> list[str]:
        """Up to a batch of ids already waiting in the queue, without blocking."""
        ids: list[str] = []
        while len(ids) < self._batch_size and not self._stopping.is_set():
            try:
                ids.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return ids

    def _send_claimed(
        self, claimed: list[ClaimedMessage], owner: str, sender: Sender
    ) -> list[ClaimedMessage]:
        """Send a claimed batch; record the outcomes and claim the next batch (when
        one is waiting) together. Returns that next batch, counted in flight."""
        # Send only while at least half the lease is left, so that a send never
        # overlaps the moment the scheduler may hand the message to someone else.
        lease_end = self._clock() + self._settings.lease_seconds / 2
        outcomes: list[Outcome] = []
        unsent: list[ClaimedMessage] = []
        for message in claimed:
            if self._stopping.is_set() or self._clock() >= lease_end:
                # Stopping, or the lease ran out while earlier ones were sent
                # (a slow relay): hand it back rather than risk a duplicate.
                unsent.append(message)
                continue
            outcomes.append(self._attempt(message, sender))
        if unsent:
            # No next batch: stopping, or a relay this slow gains nothing from it.
            self._record(outcomes)
            self._unclaim(unsent, owner)
            return []
        return self._record_and_claim(outcomes, owner)

    def _record_and_claim(self, outcomes: list[Outcome], owner: str) -> list[ClaimedMessage]:
        ids = self._take_ready()
        if not ids:
            self._record(outcomes)
            return []
        claimed: list[ClaimedMessage] = []
        try:
            claimed = self._outbox.record_and_claim(
                outcomes, ids, owner, self._settings.lease_seconds
            )
        except DatabaseUnavailable:
            # Neither happened. The outcomes must be written (the retrying path);
            # the ids are offered again by the scheduler, as after a failed claim.
            log.warning("database unavailable; recording alone, the next batch waits")
            self._record(outcomes)
            return []
        finally:
            with self._lock:
                self._pending.difference_update(ids)
                self._in_flight += len(claimed)
        self._recorded(outcomes)
        return claimed

    def _attempt(self, message: ClaimedMessage, sender: Sender) -> Outcome:
        started = self._clock()
        began = time.perf_counter()
        error: mailer.DeliveryError | None
        try:
            result = sender.send(message.rendered)
        except mailer.DeliveryError as exc:
            error = exc
        except Exception as exc:
            # A bug or an unclassified failure: retry it like a temporary error,
            # so the message is neither lost nor failed by our own fault.
            log.exception("unexpected error while sending %s", message.id)
            error = mailer.TemporaryDeliveryError(f"internal error: {type(exc).__name__}")
        else:
            self._observe("sent", None, began)
            return Outcome(
                id=message.id,
                attempt=message.attempt,
                rejected=list(result.rejected),
                started_at=started,
            )
        retry_at: float | None = None
        if error.temporary and message.attempt <= self._settings.smtp_max_retries:
            delay = mailer.backoff_delay(
                message.attempt,
                self._settings.smtp_backoff_base,
                self._settings.smtp_backoff_max,
                self._rng,
            )
            retry_at = self._clock() + delay
            log.info(
                "temporary failure of %s (attempt %d), retry in %.1fs: %s",
                message.id,
                message.attempt,
                delay,
                error.reply,
                extra={"message_id": message.rendered.message_id},
            )
        else:
            log.warning(
                "delivery of %s failed after %d attempt(s): %s",
                message.id,
                message.attempt,
                error.reply,
                extra={"message_id": message.rendered.message_id},
            )
        self._observe("retried" if retry_at is not None else "failed", error.code, began)
        return Outcome(
            id=message.id,
            attempt=message.attempt,
            error=error,
            retry_at=retry_at,
            started_at=started,
        )

    def _observe(self, outcome: str, code: int | None, began: float) -> None:
        if self._metrics is not None:
            self._metrics.record_delivery("async", outcome, code, time.perf_counter() - began)

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Write the batch's outcomes, retrying while the database is away.

        Giving up would let the leases expire and the sent ones go out again, so
        this keeps trying until it succeeds or stop() has begun (then the lease
        decides, as after a crash).
        """
        if not outcomes:
            return
        while True:
            try:
                self._outbox.record_outcomes(outcomes)
                break
            except DatabaseUnavailable:
                log.warning("could not record %d outcome(s); retrying", len(outcomes))
                if self._stopping.wait(self._settings.poll_interval):
                    return
        self._recorded(outcomes)

    def _recorded(self, outcomes: Sequence[Outcome]) -> None:
        """Account for written outcomes: remember the retries, count the finished."""
        with self._lock:
            for outcome in outcomes:
                if outcome.retry_at is not None:
                    heapq.heappush(self._retries, (outcome.retry_at, outcome.id))
        self._finish(sum(1 for o in outcomes if o.retry_at is None))

    def _unclaim(self, claimed: Sequence[ClaimedMessage], owner: str) -> None:
        try:
            self._outbox.unclaim(claimed, owner)
        except DatabaseUnavailable:
            log.warning(
                "could not hand back %d claimed message(s); they return when their lease expires",
                len(claimed),
            )
            return
        for message in claimed:
            self._offer(message.id)

    # -- scheduler --------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        last_resync = last_purge = time.monotonic()
        while not self._stopping.wait(self._settings.poll_interval):
            try:
                reclaimed = self._outbox.reclaim_expired_leases()
                self._fill_queue(force=reclaimed > 0)
                now = time.monotonic()
                if now - last_resync >= self.resync_interval:
                    last_resync = now
                    self._resync_backlog()
                if now - last_purge >= self.purge_interval:
                    last_purge = now
                    self._purge()
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
        room = self._maxsize - self._queue.qsize()
        if room <= 0 or self._stopping.is_set():
            return
        now = self._clock()
        due: list[str] = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[1])
        for message_id in due:
            # Refused only when the queue is full: then the count below misses it.
            self._offer(message_id)
        with self._lock:
            waiting = len(self._pending)
            known = waiting + self._in_flight + len(self._retries)
            unaccounted = self._backlog - self._reserving - known
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
            if not self._offer(message_id) and self._queue.full():
                break

    def _resync_backlog(self) -> None:
        unfinished = self._outbox.count_unfinished()
        with self._lock:
            self._backlog = unfinished + self._reserving

    def _purge(self) -> None:
        now = self._clock()
        retention = self._settings.retention_seconds
        self._outbox.purge(
            idempotency_before=now - self._settings.idempotency_ttl_seconds,
            bodies_sent_before=now - retention if retention is not None else None,
        )
