"""Behaviours real relays have: greylisting and a token-bucket rate limit.

Both read time from an injected clock so tests advance it instead of sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


class Greylist:
    """RFC 6647 greylisting by (sender, recipient).

    The first attempt for a pair is refused; a retry at least ``delay``
    seconds after that first attempt is accepted, and the pair is remembered
    so later mail passes at once. Retries that come too early are refused
    again without restarting the wait, as postgrey does.
    """

    def __init__(self, delay: float, clock: Clock) -> None:
        self.delay = delay
        self._clock = clock
        self._first_seen: dict[tuple[str, str], float] = {}
        self._passed: set[tuple[str, str]] = set()

    def allows(self, sender: str, recipient: str) -> bool:
        key = (sender.lower(), recipient.lower())
        if key in self._passed:
            return True
        now = self._clock()
        first = self._first_seen.get(key)
        if first is None:
            self._first_seen[key] = now
            return False
        if now - first >= self.delay:
            self._passed.add(key)
            del self._first_seen[key]
            return True
        return False


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` messages per ``period`` seconds, with bursts up to ``count``."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``N/s``, ``N/m``, ``N/h`` (also ``N/second`` ...) or ``N/SECONDSs``, e.g. ``10/5s``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*", text.lower())
        if not match or match.group(3) not in _PERIODS:
            raise ValueError(f"rate limit must look like 100/s, 600/m or 10/5s, not {text!r}")
        count = int(match.group(1))
        multiple = float(match.group(2)) if match.group(2) else 1.0
        if count < 1 or multiple <= 0:
            raise ValueError(f"rate limit must be positive, not {text!r}")
        return cls(count, multiple * _PERIODS[match.group(3)])


class TokenBucket:
    """A real token bucket: ``count`` tokens, refilled continuously at ``count/period`` per s."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.count)
        self._rate = limit.count / limit.period
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.limit.count), self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
