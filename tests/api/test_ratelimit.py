"""RateLimiter: a token bucket per API key, on an injected clock."""

from __future__ import annotations

import pytest

from service.api.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


def test_rate_limiter_refills_at_its_rate_up_to_the_burst() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("k") == 1
    now[0] += 10.0  # long idle: back to the burst, not more
    assert [limiter.acquire("k") for _ in range(4)] == [None, None, None, 1]
