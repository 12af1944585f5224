"""ConcurrencyLimit: grow a round at a time while the relay accepts and mail waits;
halve once per event when it is overwhelmed."""

from __future__ import annotations

import pytest

from service.concurrency import ConcurrencyLimit, is_congestion
from service.errors import PermanentDeliveryError, TemporaryDeliveryError
from tests.helpers import FakeClock

pytestmark = pytest.mark.unit


def test_it_grows_by_one_per_round_of_successes_up_to_the_maximum() -> None:
    limit = ConcurrencyLimit(6, initial=2)
    for _ in range(2):
        limit.delivered(backlog=True)
    assert limit.limit == 3
    for _ in range(3):
        limit.delivered(backlog=True)
    assert limit.limit == 4
    for _ in range(100):
        limit.delivered(backlog=True)
    assert limit.limit == 6


def test_successes_without_a_backlog_say_nothing() -> None:
    limit = ConcurrencyLimit(6, initial=2)
    for _ in range(100):
        limit.delivered(backlog=False)
    assert limit.limit == 2


def test_congestion_halves_it_once_per_event() -> None:
    clock = FakeClock(0.0)
    limit = ConcurrencyLimit(20, initial=16, clock=clock)
    for _ in range(10):  # a relay restart drops every connection at once
        limit.congested()
    assert limit.limit == 8
    clock.advance(1.5)
    limit.congested()
    assert limit.limit == 4
    for _ in range(5):
        clock.advance(1.5)
        limit.congested()
    assert limit.limit == 1  # never below one connection


def test_threads_over_the_limit_wait_until_it_grows() -> None:
    limit = ConcurrencyLimit(4, initial=1)
    assert limit.admits(0)
    assert not limit.admits(1)
    assert not limit.wait_admitted(1, 0.01)
    limit.delivered(backlog=True)
    assert limit.wait_admitted(1, 0.01)


def test_which_failures_are_congestion() -> None:
    assert is_congestion(TemporaryDeliveryError("closing", code=421))
    assert is_congestion(TemporaryDeliveryError("no TLS now", code=454))
    assert is_congestion(TemporaryDeliveryError("connection refused"))  # no code: network
    assert not is_congestion(TemporaryDeliveryError("4.2.2 mailbox full", code=452))
    assert not is_congestion(PermanentDeliveryError("5.1.1 no such user", code=550))
