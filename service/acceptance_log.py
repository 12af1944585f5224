"""AcceptanceLog: the relay's acceptances not yet recorded, written by whichever
delivery thread needs one written first (flat combining: no thread of its own).

A delivery thread adds each accepted message (its `sent` outcome) as the relay's
250 arrives and goes on with the next message's envelope. Before that next
message's final dot it must find its acceptance recorded (HeldClaims.before_dot),
so a crash re-sends at most one message per connection. The thread that needs a
write takes the write lock and records every acceptance waiting, its own and the
other connections', in one small transaction (Outbox.record_acceptances: attempt
rows only); a thread that finds the lock taken waits for it and usually finds
its acceptance written by then. The batch record takes what waits too
(`writing()`), into the transaction that records the batch and claims the next.

One lock for these writes keeps the delivery threads from meeting on SQLite's
write lock, whose busy handler sleeps for milliseconds; a hand-off to a writer
thread cost two thread switches per message instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from service.errors import DatabaseUnavailable
from service.types import Outcome

if TYPE_CHECKING:
    from service.db import Outbox

__all__ = ["Acceptance", "AcceptanceLog"]

log = logging.getLogger(__name__)


class Acceptance:
    """One accepted message waiting to be recorded; `recorded` once committed."""

    __slots__ = ("outcome", "recorded")

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.recorded = False


class AcceptanceLog:
    """Thread-safe: add() and record() from the delivery threads, close() from stop()."""

    def __init__(self, outbox: Outbox, *, retry_interval: float) -> None:
        self._outbox = outbox
        self._retry_interval = retry_interval
        self._lock = threading.Lock()  # guards _waiting and _closed
        self._write_lock = threading.Lock()  # one write of acceptances at a time
        self._waiting: list[Acceptance] = []
        self._closed = False
        # The writes come one per message or per few: a connection kept for them.
        self._held = outbox.hold_connection()

    def add(self, outcome: Outcome) -> Acceptance:
        """The relay took this message: queue its acceptance for the next write."""
        acceptance = Acceptance(outcome)
        with self._lock:
            if not self._closed:
                self._waiting.append(acceptance)
                return acceptance
        # A send stuck past stop() finished after all, and its batch will not be
        # recorded: write its whole outcome here, once, so that the next start does
        # not send it again.
        try:
            self._outbox.record_outcomes([outcome])
        except DatabaseUnavailable:
            log.warning("could not record a late outcome; the next start re-sends it")
            return acceptance
        acceptance.recorded = True
        return acceptance

    def record(self, acceptance: Acceptance, timeout: float) -> bool:
        """Make sure `acceptance` is recorded, writing every one waiting if need be.
        False if it is not within about `timeout` (another write holds the lock, or
        the database is away): the caller decides whether to go on waiting."""
        if acceptance.recorded:
            return True
        if not self._write_lock.acquire(timeout=timeout):
            return acceptance.recorded
        try:
            if acceptance.recorded:
                return True
            batch = self._take()
            try:
                held = None if self._closed else self._held
                self._outbox.record_acceptances([a.outcome for a in batch], held)
            except DatabaseUnavailable as exc:
                self._put_back(batch)
                log.warning("could not record %d acceptance(s); retrying: %s", len(batch), exc)
            except Exception:
                self._put_back(batch)
                log.exception("recording %d acceptance(s) failed; retrying", len(batch))
            else:
                self._mark(batch)
                return acceptance.recorded
        finally:
            self._write_lock.release()
        time.sleep(min(timeout, self._retry_interval))
        return acceptance.recorded

    @contextmanager
    def writing(self) -> Iterator[list[Outcome]]:
        """Hold the write lock and take every acceptance waiting, for the caller to
        write in its own transaction: they count as recorded if the block ends
        normally, and wait again if it raises."""
        with self._write_lock:
            batch = self._take()
            try:
                yield [a.outcome for a in batch]
            except BaseException:
                self._put_back(batch)
                raise
            self._mark(batch)

    def close(self, timeout: float) -> bool:
        """Write what waits, retrying for up to `timeout` (the database away); from
        now on add() writes inline. False if some could not be written: those
        messages stay in `sending` and the next start takes them back."""
        with self._lock:
            self._closed = True
        try:
            return self._write_all(timeout)
        finally:
            self._held.close()

    def _write_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._waiting:
                    return True
                last = self._waiting[-1]
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "could not record every acceptance before exit; the next start re-sends those"
                )
                return False
            self.record(last, min(left, self._retry_interval))

    def _take(self) -> list[Acceptance]:
        with self._lock:
            batch, self._waiting = self._waiting, []
        return batch

    def _put_back(self, batch: list[Acceptance]) -> None:
        with self._lock:
            self._waiting[:0] = batch

    @staticmethod
    def _mark(batch: list[Acceptance]) -> None:
        for acceptance in batch:
            acceptance.recorded = True
