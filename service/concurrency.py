"""ConcurrencyLimit: how many delivery connections the relay gets, adapted as Postfix's
queue manager does it.

Start with a few connections; while there is a backlog and the relay keeps
accepting, open one more per round of successes (as many successes as there are
connections), up to WORKER_CONCURRENCY. On a sign that the relay is overwhelmed (a
421 or 454 reply, a refused or dropped connection, a timeout) halve it, at most
once a second so that the failures of one event count once, then grow again the
slow way. A relay that caps connections or rates thus meets a few failures and a
steady number of connections, not a storm.

Delivery thread n runs while n < limit; the others park with their connection
closed, so the connections open follow the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.errors import DeliveryError

__all__ = ["INITIAL_CONCURRENCY", "ConcurrencyLimit", "is_congestion"]

# Postfix's initial_destination_concurrency is 5; a few, so that a small relay is
# not met with WORKER_CONCURRENCY connections at once.
INITIAL_CONCURRENCY = 4
# Failures closer together than this are one event (a relay restart drops every
# connection at once).
_CUT_COOLDOWN = 1.0

# Replies that speak for the relay as a whole, not for one message: closing
# (421), and "insufficient system storage" / TLS not available now (454).
_CONGESTION_CODES = frozenset({421, 454})


def is_congestion(error: DeliveryError) -> bool:
    """A failure that says the relay has too many connections or too much load."""
    return error.temporary and (error.code is None or error.code in _CONGESTION_CODES)


class ConcurrencyLimit:
    """Thread-safe; read on every delivery."""

    def __init__(
        self,
        maximum: int,
        *,
        initial: int = INITIAL_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self._limit = max(1, min(initial, maximum))
        self._clock = clock
        self._cond = threading.Condition()
        self._successes = 0
        self._last_cut = float("-inf")

    @property
    def limit(self) -> int:
        return self._limit

    def admits(self, slot: int) -> bool:
        return slot < self._limit

    def wait_admitted(self, slot: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: slot < self._limit, timeout)

    def delivered(self, *, backlog: bool) -> None:
        """The relay accepted a message. Counts toward growth only while more waits:
        an idle queue says nothing about what the relay could take."""
        if not backlog or self._limit >= self.maximum:
            return
        with self._cond:
            self._successes += 1
            if self._successes >= self._limit and self._limit < self.maximum:
                self._limit += 1
                self._successes = 0
                self._cond.notify_all()

    def congested(self) -> None:
        with self._cond:
            now = self._clock()
            if now - self._last_cut < _CUT_COOLDOWN:
                return
            self._last_cut = now
            self._limit = max(1, self._limit // 2)
            self._successes = 0
