"""OutcomeWriter: one thread that writes every delivery thread's outcomes, grouped.

A delivery thread hands over each outcome as soon as the relay has answered and
goes on with the next message's envelope; it waits for that outcome to be written
only before the next message's final dot (HeldClaims.before_dot). So a crash can
re-send at most the one message per connection whose acceptance was not yet
recorded, and the write overlaps the next envelope's round trips. Every outcome
waiting when a write starts goes into that one transaction (group commit), so
the commits per second stay far below the messages per second under load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from service.errors import DatabaseUnavailable
from service.types import Outcome

if TYPE_CHECKING:
    from service.db import Outbox

__all__ = ["OutcomeWriter"]

log = logging.getLogger(__name__)


class OutcomeWriter:
    """submit() from any thread; start(), then stop() once nobody submits any more."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        on_written: Callable[[Sequence[Outcome]], None],
        retry_interval: float,
    ) -> None:
        self._outbox = outbox
        self._on_written = on_written
        self._retry_interval = retry_interval
        self._cond = threading.Condition()
        self._waiting: list[tuple[Outcome, threading.Event]] = []
        self._closing = False
        self._ended = False  # the thread is gone: submit() writes inline
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mail-outcomes", daemon=True)
        self._thread.start()

    def submit(self, outcome: Outcome) -> threading.Event:
        """Queue `outcome` for the next write; the event is set once it is committed."""
        written = threading.Event()
        with self._cond:
            if not self._ended:
                self._waiting.append((outcome, written))
                self._cond.notify()
                return written
        # A send stuck past stop() finished after all: write its outcome here, once,
        # so that the next start does not send it again.
        try:
            self._outbox.record_outcomes([outcome])
        except DatabaseUnavailable:
            log.warning("could not record a late outcome; the next start re-sends it")
            return written
        written.set()
        self._on_written([outcome])
        return written

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
            log.warning("could not write every outcome before exit; the next start re-sends those")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    self._ended = True
                    return
                batch, self._waiting = self._waiting, []
            outcomes = [outcome for outcome, _ in batch]
            if not self._write(outcomes):
                with self._cond:
                    self._ended = True
                return
            for _, written in batch:
                written.set()
            try:
                self._on_written(outcomes)
            except Exception:
                log.exception("accounting for written outcomes failed")

    def _write(self, outcomes: list[Outcome]) -> bool:
        """Retry while the database is away: giving up would let the leases expire
        and the sent messages go out again. False once stop() gave up."""
        while True:
            try:
                self._outbox.record_outcomes(outcomes)
                return True
            except DatabaseUnavailable:
                log.warning("could not record %d outcome(s); retrying", len(outcomes))
            except Exception:
                log.exception("recording %d outcome(s) failed; retrying", len(outcomes))
            if self._abandon.wait(self._retry_interval):
                return False
