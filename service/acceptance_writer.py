"""AcceptanceWriter: one thread that records, for every delivery thread, that the
relay took a message, grouped.

A delivery thread hands over each accepted message (its `sent` outcome) as soon
as the relay's 250 arrives and goes on with the next message's envelope; it
waits for that record only before the next message's final dot
(HeldClaims.before_dot). So a crash can re-send at most the one message per
connection whose acceptance was not yet recorded. The record is the attempt row
alone (Outbox.record_acceptances): one small commit; the message rows follow
with the batch, in the transaction that claims the next one, as before.

Every acceptance waiting when a write starts goes into that one transaction. A
write starts when a delivery thread needs one before its next dot (`hurry()`),
when as many wait as there are connections, or LINGER after the first: on a fast
relay one commit carries about one per connection, and on a slow one the commit
is done long before the next envelope's replies come back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import DatabaseUnavailable
from service.types import Outcome

if TYPE_CHECKING:
    from service.db import Outbox

__all__ = ["LINGER", "AcceptanceWriter"]

log = logging.getLogger(__name__)

# Longest an acceptance waits for others to share its commit when nobody needs it yet:
# shorter than any relay's envelope round trip over a network.
LINGER = 0.002


class AcceptanceWriter:
    """submit() from any thread; start(), then stop() once nobody submits any more."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        retry_interval: float,
        group: Callable[[], int] = lambda: 1,
    ) -> None:
        self._outbox = outbox
        self._retry_interval = retry_interval
        self._group = group  # how many are worth one commit (connections)
        self._hurried = False
        self._cond = threading.Condition()
        self._waiting: list[tuple[Outcome, threading.Event]] = []
        self._closing = False
        self._ended = False  # the thread is gone: submit() writes inline
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mail-acceptances", daemon=True)
        self._thread.start()

    def submit(self, outcome: Outcome) -> threading.Event:
        """Queue `outcome` for the next write; the event is set once it is committed."""
        written = threading.Event()
        with self._cond:
            if not self._ended:
                self._waiting.append((outcome, written))
                if len(self._waiting) == 1 or len(self._waiting) >= self._group():
                    self._cond.notify()
                return written
        # A send stuck past stop() finished after all, and its batch will not be
        # recorded: write its whole outcome here, once, so that the next start does
        # not send it again.
        try:
            self._outbox.record_outcomes([outcome])
        except DatabaseUnavailable:
            log.warning("could not record a late outcome; the next start re-sends it")
            return written
        written.set()
        return written

    def hurry(self) -> None:
        """A delivery thread waits for an acceptance: write what waits now."""
        with self._cond:
            if not self._hurried:
                self._hurried = True
                self._cond.notify()

    def stop(self, timeout: float) -> None:
        """Write what is waiting, then end. Past `timeout` (the database away), give
        up: those messages stay in `sending` and the next start takes them back."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            log.warning(
                "could not record every acceptance before exit; the next start re-sends those"
            )

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    self._ended = True
                    return
                # Let the other connections' outcomes join, unless someone waits.
                self._cond.wait_for(
                    lambda: self._hurried or self._closing or len(self._waiting) >= self._group(),
                    LINGER,
                )
                batch, self._waiting = self._waiting, []
                self._hurried = False
            outcomes = [outcome for outcome, _ in batch]
            if not self._write(outcomes):
                with self._cond:
                    self._ended = True
                return
            for _, written in batch:
                written.set()

    def _write(self, outcomes: list[Outcome]) -> bool:
        """Retry while the database is away: giving up would let the leases expire
        and the sent messages go out again. False once stop() gave up."""
        while True:
            try:
                self._outbox.record_acceptances(outcomes)
                return True
            except DatabaseUnavailable:
                log.warning("could not record %d acceptance(s); retrying", len(outcomes))
            except Exception:
                log.exception("recording %d acceptance(s) failed; retrying", len(outcomes))
            if self._abandon.wait(self._retry_interval):
                return False
