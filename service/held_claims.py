"""HeldClaims: what one delivery thread has claimed and not finished, and the gate
before each final dot.

The thread takes its claimed messages one by one (`next()`). For each, the
Sender calls `before_dot()` after the relay's 354: it makes sure the previous
message's acceptance on this connection is recorded (writing it, and whatever
else waits, if nobody has: AcceptanceLog.record), then marks the message as past
its final dot. A message whose lease would end before its dot could go (the
previous outcome could not be written for that long: the database is away) is
abandoned there and left to its lease, since another instance may take it then.

On SIGTERM, once the grace period is over, `take_back()` returns every message
that has not reached its dot (the rest of the batch, and the current one if it
is still in its envelope), so that they go back to `queued` before exit; a
message already past the dot is left in `sending` for the next start. One lock
orders the two, so a message is either sent or handed back, never both.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from service.acceptance_log import Acceptance
from service.errors import ClaimReleased
from service.types import ClaimedMessage

__all__ = ["HeldClaims", "LeaseRunningOut"]

# How often a thread waiting for its previous acceptance to be recorded looks
# whether stop() took its message back.
_WAIT_SLICE = 0.05


class Recorder(Protocol):
    def record(self, acceptance: Acceptance, timeout: float) -> bool: ...


class LeaseRunningOut(ClaimReleased):
    """The message is abandoned before its dot and left claimed: its lease decides."""


class HeldClaims:
    """Thread-safe: the delivery thread and stop() share it."""

    def __init__(self, acceptances: Recorder, clock: Callable[[], float] = time.time) -> None:
        self._acceptances = acceptances  # an AcceptanceLog
        self._clock = clock
        self._dot_deadline = float("inf")
        self._lock = threading.Lock()
        self._waiting: deque[ClaimedMessage] = deque()
        self._current: ClaimedMessage | None = None
        self._past_dot = False
        self._closed = False
        # The previous message's acceptance on this connection.
        self._previous: Acceptance | None = None

    def load(self, claimed: Sequence[ClaimedMessage], dot_deadline: float) -> None:
        """A claimed batch; no final dot of it may go at or after `dot_deadline`
        (a little before the claim's lease ends)."""
        with self._lock:
            self._waiting.extend(claimed)
            self._dot_deadline = dot_deadline

    def next(self) -> ClaimedMessage | None:
        """The next message to send, or None (none left, or taken back)."""
        with self._lock:
            self._current = None
            if self._closed or not self._waiting:
                return None
            self._current = self._waiting.popleft()
            self._past_dot = False
            return self._current

    def peek(self) -> ClaimedMessage | None:
        """The message next() will return unless something intervenes (the Sender
        may send its envelope ahead: nothing of it is committed by that)."""
        with self._lock:
            if self._closed or not self._waiting:
                return None
            return self._waiting[0]

    def after(self, accepted: Acceptance) -> None:
        """The relay took the current message: the next final dot waits until
        this is recorded."""
        self._previous = accepted

    def before_dot(self) -> None:
        """The Sender's gate (service.types.Sender.send). Raises ClaimReleased when
        stop() took the message back first."""
        previous = self._previous
        if previous is not None:
            while not self._acceptances.record(previous, _WAIT_SLICE):
                if self._closed:
                    raise ClaimReleased("shutting down: handed back before its final dot")
                self._check_lease()
        self._check_lease()
        with self._lock:
            if self._closed:
                raise ClaimReleased("shutting down: handed back before its final dot")
            self._past_dot = True

    def _check_lease(self) -> None:
        if self._clock() >= self._dot_deadline:
            raise LeaseRunningOut("the lease ends before the final dot could go")

    @property
    def released(self) -> bool:
        return self._closed

    def rest(self) -> list[ClaimedMessage]:
        """Take the messages not yet started (the lease is running out)."""
        with self._lock:
            rest = list(self._waiting)
            self._waiting.clear()
            return rest

    def take_back(self) -> list[ClaimedMessage]:
        """Close: every message that has not reached its final dot, for unclaiming.
        The thread sends nothing more from here (its gate raises ClaimReleased)."""
        with self._lock:
            self._closed = True
            back = list(self._waiting)
            self._waiting.clear()
            if self._current is not None and not self._past_dot:
                back.append(self._current)
                self._current = None
            return back
