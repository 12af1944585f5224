"""WorkQueue: the ids waiting for the delivery threads, and what this instance holds.

The database is the truth; the queue only carries ids, so that memory stays flat
with a large backlog. Besides the queue it keeps what the scheduler needs to
know what it need not look up: ids waiting or being claimed (`pending`, so that
none is queued twice), messages claimed and not yet recorded (in flight), and
this instance's own retries, earliest first, offered when due without asking the
database.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Iterable

__all__ = ["WorkQueue"]


class WorkQueue:
    """Thread-safe; bounded by QUEUE_MAXSIZE, so an accepted message always fits."""

    def __init__(self, maxsize: int, stopping: threading.Event) -> None:
        self._queue: queue.Queue[str] = queue.Queue(maxsize=maxsize)
        self._stopping = stopping
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._in_flight = 0
        self._retries: list[tuple[float, str]] = []

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def room(self) -> int:
        return self._queue.maxsize - self._queue.qsize()

    def full(self) -> bool:
        return self._queue.full()

    def offer(self, message_id: str) -> bool:
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

    def take(self, limit: int, timeout: float) -> list[str]:
        """Wait up to `timeout` for one id, then take up to `limit` that are waiting."""
        try:
            ids = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        return ids + self.take_ready(limit - 1)

    def take_ready(self, limit: int) -> list[str]:
        """Up to `limit` ids already waiting, without blocking."""
        ids: list[str] = []
        while len(ids) < limit and not self._stopping.is_set():
            try:
                ids.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return ids

    def claimed(self, ids: Iterable[str], count: int) -> None:
        """A claim of `ids` ended with `count` of them won: those are in flight, and
        the scheduler may offer every one of `ids` again (the others are someone
        else's or not due)."""
        with self._lock:
            self._pending.difference_update(ids)
            self._in_flight += count

    def landed(self, count: int) -> None:
        """`count` messages in flight had their outcome recorded or were handed back."""
        with self._lock:
            self._in_flight -= count

    def forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._pending.difference_update(ids)

    def add_retry(self, retry_at: float, message_id: str) -> None:
        with self._lock:
            heapq.heappush(self._retries, (retry_at, message_id))

    def due_retries(self, now: float) -> list[str]:
        due: list[str] = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[1])
        return due

    def known(self) -> tuple[int, int]:
        """(ids waiting, every unfinished message this instance accounts for)."""
        with self._lock:
            waiting = len(self._pending)
            return waiting, waiting + self._in_flight + len(self._retries)

    def clear(self) -> None:
        """Forget every id (they are all still queued in the database)."""
        with self._lock:
            self._pending.clear()
            self._retries.clear()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
