"""Ready-made relay behaviours: greylisting, rate limit, per-connection limit, blackhole,
latency. Time-based ones run on an injected clock, so no test waits for them."""

from __future__ import annotations

import smtplib
import time

import pytest

from fakesmtp import RateLimit, replies
from fakesmtp.policies import Greylist, TokenBucket
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import make_message

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_greylisting_refuses_the_first_attempt_and_accepts_a_later_retry(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    clock = FakeClock()
    server = fakesmtp_factory(greylist=60, clock=clock)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        assert client.rcpt("r@example.com") == (
            replies.GREYLISTED.code,
            replies.GREYLISTED.text.encode(),
        )
        clock.now += 30  # too early: still refused
        assert client.rcpt("r@example.com")[0] == replies.GREYLISTED.code
        clock.now += 30  # 60 s after the first attempt
        assert client.rcpt("r@example.com")[0] == 250
        # Another pair is greylisted on its own.
        assert client.rcpt("other@example.com")[0] == replies.GREYLISTED.code
        assert client.data(make_message())[0] == 250
    # The pair passed once and now goes straight through, even on a new connection.
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("S@example.com", ["R@example.com"], make_message("again"))
    assert [m.subject for m in server.messages()] == ["again", "Hello"]


def test_greylist_policy_keys_on_sender_and_recipient() -> None:
    clock = FakeClock()
    greylist = Greylist(10, clock)
    assert not greylist.allows("a@x", "b@y")
    clock.now += 10
    assert not greylist.allows("c@x", "b@y")
    assert greylist.allows("a@x", "b@y")


@pytest.mark.parametrize("code", [451, 421])
def test_rate_limit_is_a_token_bucket_over_mail_commands(
    fakesmtp_factory: FakeSMTPFactory, code: int
) -> None:
    clock = FakeClock()
    server = fakesmtp_factory(rate_limit="3/s", rate_limit_code=code, clock=clock)
    sent = 0
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for _ in range(3):  # the burst: a full bucket
            client.sendmail("s@example.com", ["r@example.com"], make_message())
            sent += 1
        client.ehlo()
        assert client.mail("s@example.com")[0] == code
        if code == 421:
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        else:
            client.rset()
    clock.now += 1 / 3  # one token refilled
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message())
        sent += 1
        client.ehlo()
        assert client.mail("s@example.com")[0] == code
    assert len(server.messages()) == sent == 4


def test_token_bucket_refills_continuously_and_caps_at_its_size() -> None:
    clock = FakeClock()
    bucket = TokenBucket(RateLimit.parse("10/m"), clock)
    assert sum(bucket.take() for _ in range(20)) == 10
    clock.now += 6  # 10 per 60 s: one token
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.now += 3600  # a long pause refills only up to the bucket size
    assert sum(bucket.take() for _ in range(20)) == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/s", RateLimit(100, 1.0)),
        ("600/m", RateLimit(600, 60.0)),
        ("5/hour", RateLimit(5, 3600.0)),
        ("10/5s", RateLimit(10, 5.0)),
    ],
)
def test_rate_limit_syntax(text: str, expected: RateLimit) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize("text", ["100", "x/s", "10/fortnight", "0/s", "10/0s"])
def test_bad_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit.parse(text)


def test_max_per_connection_answers_421_and_closes_after_n_messages(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = fakesmtp_factory(max_per_connection=2)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for n in range(2):
            client.sendmail("s@example.com", ["r@example.com"], make_message(f"m{n}"))
        assert client.mail("s@example.com") == (
            replies.TOO_MANY_MESSAGES.code,
            replies.TOO_MANY_MESSAGES.text.encode(),
        )
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    # A new connection gets a fresh allowance.
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("s@example.com", ["r@example.com"], make_message("m2"))
    assert len(server.messages()) == 3


def test_blackhole_accepts_with_250_and_keeps_nothing(fakesmtp_factory: FakeSMTPFactory) -> None:
    server = fakesmtp_factory(blackhole=True)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        client.rcpt("r@example.com")
        code, text = client.data(make_message())
    assert code == 250
    assert text.startswith(b"2.0.0 OK: queued as ")
    assert server.messages() == []
    assert server.stats()["messages"] == 1


def test_latency_delays_every_reply(fakesmtp_factory: FakeSMTPFactory) -> None:
    server = fakesmtp_factory(latency=0.1)
    started = time.monotonic()
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:  # greeting
        client.noop()
        client.noop()
    # greeting + 2 NOOP + QUIT; EHLO is not sent here
    assert time.monotonic() - started >= 0.4


def test_delays_use_the_injected_sleep(fakesmtp_factory: FakeSMTPFactory) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    server = fakesmtp_factory(latency=30, sleep=fake_sleep)
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.noop()
    assert slept[:2] == [30, 30]
