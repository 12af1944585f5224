"""The retry policy: one object decides retry, fail or done, and how long to wait.

urllib3's `Retry` is the model. The synchronous path (`send_with_retries`, which
waits in the request's thread) and the queue worker (which records a retry time
and moves on) ask the same `RetryPolicy`, so SMTP_MAX_RETRIES and the backoff
mean the same on both.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from service.errors import DeliveryError
from service.mailer.classify import classify

if TYPE_CHECKING:
    from service.config import Settings
    from service.types import RenderedMessage, SendResult

__all__ = ["Decision", "RetryPolicy", "send_with_retries"]

Action = Literal["done", "retry", "fail"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt; `delay` is the wait before the retry."""

    action: Action
    delay: float = 0.0

    @property
    def final(self) -> bool:
        return self.action != "retry"


@dataclass(frozen=True)
class RetryPolicy:
    """SMTP_MAX_RETRIES retries of temporary failures, with jittered exponential backoff."""

    max_retries: int
    backoff_base: float
    backoff_max: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            max_retries=settings.smtp_max_retries,
            backoff_base=settings.smtp_backoff_base,
            backoff_max=settings.smtp_backoff_max,
            rng=rng or random.Random(),  # noqa: S311  # jitter, not security
        )

    def backoff(self, retry_number: int) -> float:
        """Delay before retry n (n >= 1): jittered, at most min(max, base * 2**(n-1)).

        "Equal jitter": uniform in [limit/2, limit], so retries of many messages spread
        out without any of them coming back almost at once.
        """
        if retry_number < 1:
            raise ValueError("retry_number starts at 1")
        # Cap the exponent: 2.0**1100 overflows a float, and no schedule needs more.
        limit = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry_number - 1, 1000))
        limit = max(limit, 0.0)
        return limit / 2 + self.rng.uniform(0.0, limit / 2)

    def decide(self, attempt: int, error: DeliveryError | None) -> Decision:
        """After attempt number `attempt` (1 for the first) ended with `error`."""
        if error is None:
            return Decision("done")
        if error.temporary and attempt <= self.max_retries:
            return Decision("retry", self.backoff(attempt))
        return Decision("fail")


def send_with_retries(
    send: Callable[[RenderedMessage], SendResult],
    message: RenderedMessage,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_attempt: Callable[[int, DeliveryError | None, Decision], None] | None = None,
) -> SendResult:
    """The synchronous path: retry temporary failures inline; raise the last
    DeliveryError when the policy says fail. `on_attempt(n, error_or_None, decision)`
    is called after every attempt (for the attempt log)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            result = send(message)
        except Exception as exc:
            error = classify(exc)
            decision = policy.decide(attempt, error)
            if on_attempt is not None:
                on_attempt(attempt, error, decision)
            if decision.final:
                if error is exc:
                    raise
                raise error from exc
            sleep(decision.delay)
            continue
        if on_attempt is not None:
            on_attempt(attempt, None, Decision("done"))
        return result
