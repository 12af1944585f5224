"""Backlog: the QUEUE_MAXSIZE bound on accepted, unfinished async messages, and the
Retry-After a full queue answers with.

The count is kept in memory (+1 on reserve(), -1 on release() and when a message
is sent or failed) and re-synced every few seconds from the database
(count_unfinished() plus the reservations whose insert is still in progress).
Because that count covers every row of the database, several instances sharing
one database share one bound: between two re-syncs each instance can overshoot
it by what it accepted itself in that interval, no more.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable

from service.errors import QueueFull

__all__ = ["Backlog"]

# Retry-After bounds and the window over which the drain rate is measured.
_RETRY_AFTER_MIN = 1
_RETRY_AFTER_MAX = 60
_RETRY_AFTER_UNKNOWN = 5  # nothing finished lately (relay down?): come back soon, cheaply
_RATE_WINDOW = 10.0


class Backlog:
    """Thread-safe counts of the backlog and the recent drain rate."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._reserving = 0  # reserve()d, neither committed() nor release()d yet
        self._finished: deque[tuple[float, int]] = deque()  # (time, count) for the drain rate

    @property
    def count(self) -> int:
        """Accepted and unfinished messages counted against QUEUE_MAXSIZE."""
        return self._count

    @property
    def stored(self) -> int:
        """The part of the count that is rows in the database (not mid-insert)."""
        with self._lock:
            return self._count - self._reserving

    def reserve(self, count: int = 1) -> None:
        """Take `count` slots before inserting, all or none. Raises QueueFull."""
        with self._lock:
            if self._count + count > self.maxsize:
                raise QueueFull(self._retry_after_locked())
            self._count += count
            self._reserving += count

    def release(self, count: int = 1) -> None:
        """Give back slots whose insert failed."""
        with self._lock:
            self._count = max(0, self._count - count)
            self._reserving = max(0, self._reserving - count)

    def committed(self, count: int = 1) -> None:
        """The reservations are now rows: count_unfinished() sees them from here on."""
        with self._lock:
            self._reserving = max(0, self._reserving - count)

    def finish(self, count: int) -> None:
        """`count` messages were sent or failed for good."""
        if count <= 0:
            return
        with self._lock:
            self._count = max(0, self._count - count)
            self._finished.append((self._clock(), count))

    def resync(self, unfinished: int) -> None:
        """Set the count from the database's `unfinished` rows."""
        with self._lock:
            self._count = unfinished + self._reserving

    def _retry_after_locked(self) -> int:
        """Seconds until about a tenth of the backlog has drained at the recent rate."""
        now = self._clock()
        while self._finished and self._finished[0][0] < now - _RATE_WINDOW:
            self._finished.popleft()
        done = sum(count for _, count in self._finished)
        if done == 0:
            return _RETRY_AFTER_UNKNOWN
        rate = done / _RATE_WINDOW
        wanted = max(1, self.maxsize // 10)
        seconds = math.ceil(wanted / rate)
        return min(_RETRY_AFTER_MAX, max(_RETRY_AFTER_MIN, seconds))
