"""RetryPolicy (retry, fail or done; the backoff schedule) and the synchronous retry loop."""

from __future__ import annotations

import random
import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import PermanentDeliveryError, TemporaryDeliveryError
from service.retry import Decision, RetryPolicy, send_with_retries
from service.types import RenderedMessage, SendResult

pytestmark = pytest.mark.unit

MESSAGE = RenderedMessage(
    message_id="<1@example.com>", mail_from="a@example.com", rcpt_tos=["b@example.com"], data=b"x"
)


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    return RetryPolicy(max_retries=0, backoff_base=base, backoff_max=cap, rng=rng).backoff(
        retry_number
    )


def test_the_policy_decides_done_retry_or_fail() -> None:
    """Sent is done; a temporary failure retries while retries are left, with the
    backoff's delay; a permanent one, or retries used up, fails."""
    policy = RetryPolicy(max_retries=2, backoff_base=1.0, backoff_max=60.0, rng=random.Random(5))
    temporary = TemporaryDeliveryError("busy", code=451)
    assert policy.decide(1, None) == Decision("done")
    first, second = policy.decide(1, temporary), policy.decide(2, temporary)
    assert (first.action, second.action) == ("retry", "retry")
    assert 0.5 <= first.delay <= 1.0
    assert 1.0 <= second.delay <= 2.0
    assert policy.decide(3, temporary) == Decision("fail")
    assert policy.decide(1, PermanentDeliveryError("no", code=550)) == Decision("fail")
    assert [d.final for d in (first, Decision("done"), Decision("fail"))] == [False, True, True]


@given(
    n=st.integers(1, 200),
    base=st.floats(0, 100, allow_nan=False),
    cap=st.floats(0, 3600, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_within_half_and_whole_of_the_contract_bound(
    n: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(n, base, cap, random.Random(seed))
    bound = min(cap, base * 2.0 ** (n - 1))
    assert 0.0 <= delay <= bound
    assert delay >= bound / 2


def test_backoff_schedule_doubles_until_the_cap() -> None:
    rng = random.Random(7)
    bounds = [min(60.0, 1.0 * 2 ** (n - 1)) for n in range(1, 10)]
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(1, 10)]
    assert bounds == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for delay, bound in zip(delays, bounds, strict=True):
        assert bound / 2 <= delay <= bound


def test_backoff_is_jittered() -> None:
    rng = random.Random(1)
    delays = {backoff_delay(3, 1.0, 60.0, rng) for _ in range(20)}
    assert len(delays) == 20


def test_backoff_survives_huge_retry_numbers() -> None:
    assert backoff_delay(10_000, 1.0, 30.0, random.Random(0)) <= 30.0


def test_backoff_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(0, 1.0, 60.0, random.Random(0))


# ---------------------------------------------------------------- send_with_retries


class Script:
    """A send function that fails as scripted, then succeeds."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self, message: RenderedMessage) -> SendResult:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return SendResult()


def run(script: Script, max_retries: int = 3) -> tuple[list[float], list[tuple[int, str | None]]]:
    sleeps: list[float] = []
    attempts: list[tuple[int, str | None]] = []
    try:
        send_with_retries(
            script,
            MESSAGE,
            RetryPolicy(max_retries, backoff_base=1.0, backoff_max=60.0, rng=random.Random(3)),
            sleep=sleeps.append,
            on_attempt=lambda n, err, _: attempts.append((n, None if err is None else str(err))),
        )
    finally:
        script.attempts = attempts  # type: ignore[attr-defined]
        script.sleeps = sleeps  # type: ignore[attr-defined]
    return sleeps, attempts


def test_temporary_failures_are_retried_with_backoff_then_succeed() -> None:
    script = Script(
        TemporaryDeliveryError("try later", code=451), TemporaryDeliveryError("again", code=421)
    )
    sleeps, attempts = run(script)
    assert script.calls == 3
    assert attempts == [(1, "451 try later"), (2, "421 again"), (3, None)]
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0
    assert 1.0 <= sleeps[1] <= 2.0


def test_permanent_failure_is_not_retried() -> None:
    script = Script(PermanentDeliveryError("no such user", code=550))
    with pytest.raises(PermanentDeliveryError):
        run(script)
    assert script.calls == 1
    assert script.sleeps == []  # type: ignore[attr-defined]
    assert script.attempts == [(1, "550 no such user")]  # type: ignore[attr-defined]


def test_retries_run_out_and_the_last_error_is_raised() -> None:
    script = Script(*(TemporaryDeliveryError(f"try {i}", code=451) for i in range(5)))
    with pytest.raises(TemporaryDeliveryError, match="try 2"):
        run(script, max_retries=2)
    assert script.calls == 3
    assert len(script.sleeps) == 2  # type: ignore[attr-defined]


def test_zero_retries_means_one_attempt() -> None:
    script = Script(TemporaryDeliveryError("busy", code=451))
    with pytest.raises(TemporaryDeliveryError):
        run(script, max_retries=0)
    assert script.calls == 1


def test_unclassified_exceptions_from_send_are_classified() -> None:
    script = Script(ConnectionResetError("reset"), smtplib.SMTPResponseException(554, b"no"))
    with pytest.raises(PermanentDeliveryError) as info:
        run(script)
    assert script.calls == 2
    assert isinstance(info.value.__cause__, smtplib.SMTPResponseException)


def test_default_rng_and_no_callback_work() -> None:
    script = Script(TemporaryDeliveryError("busy", code=451))
    sleeps: list[float] = []
    send_with_retries(
        script,
        MESSAGE,
        RetryPolicy(max_retries=1, backoff_base=0.5, backoff_max=1.0),
        sleep=sleeps.append,
    )
    assert script.calls == 2
    assert 0.25 <= sleeps[0] <= 0.5
