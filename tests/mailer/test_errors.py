"""Error classification, the backoff schedule and the synchronous retry loop."""

from __future__ import annotations

import random
import smtplib
import socket
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.mailer import (
    DeliveryError,
    PermanentDeliveryError,
    RenderedMessage,
    SendResult,
    SMTPProtocolError,
    TemporaryDeliveryError,
    classify,
)
from service.retry import RetryPolicy, send_with_retries

pytestmark = pytest.mark.unit

MESSAGE = RenderedMessage(
    message_id="<1@example.com>", mail_from="a@example.com", rcpt_tos=["b@example.com"], data=b"x"
)


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    return RetryPolicy(max_retries=0, backoff_base=base, backoff_max=cap, rng=rng).backoff(
        retry_number
    )


def test_error_hierarchy_is_pinned() -> None:
    """The worker relies on this shape: one base, temporary and permanent beneath it."""
    assert issubclass(TemporaryDeliveryError, DeliveryError)
    assert issubclass(PermanentDeliveryError, DeliveryError)
    assert not issubclass(TemporaryDeliveryError, PermanentDeliveryError)
    assert not issubclass(PermanentDeliveryError, TemporaryDeliveryError)
    assert DeliveryError.__bases__ == (Exception,)
    assert TemporaryDeliveryError.temporary is True
    assert PermanentDeliveryError.temporary is False
    error = TemporaryDeliveryError("4.7.1 Try later", code=451, recipient="b@example.com")
    assert (error.reply, error.code, error.recipient) == ("4.7.1 Try later", 451, "b@example.com")
    assert str(error) == "451 4.7.1 Try later (recipient b@example.com)"
    assert str(PermanentDeliveryError("no route")) == "no route"


@given(code=st.integers(400, 499), text=st.text(max_size=40))
def test_every_4xx_reply_is_temporary(code: int, text: str) -> None:
    for exc in (
        smtplib.SMTPResponseException(code, text.encode()),
        smtplib.SMTPSenderRefused(code, text.encode(), "a@example.com"),
        smtplib.SMTPDataError(code, text),
        smtplib.SMTPRecipientsRefused({"b@example.com": (code, text.encode())}),
    ):
        error = classify(exc, "b@example.com")
        assert isinstance(error, TemporaryDeliveryError)
        assert error.code == code
        assert error.recipient == "b@example.com"
        assert error.__cause__ is exc


@given(code=st.integers(500, 599), text=st.text(max_size=40))
def test_every_5xx_reply_is_permanent(code: int, text: str) -> None:
    for exc in (
        smtplib.SMTPResponseException(code, text.encode()),
        smtplib.SMTPSenderRefused(code, text.encode(), "a@example.com"),
        smtplib.SMTPDataError(code, text),
        smtplib.SMTPRecipientsRefused({"b@example.com": (code, text.encode())}),
    ):
        error = classify(exc)
        assert isinstance(error, PermanentDeliveryError)
        assert error.code == code


def test_reply_text_is_decoded_and_kept_on_one_line() -> None:
    error = classify(smtplib.SMTPResponseException(550, b"5.1.1 No such user\nhere"), "x@y.z")
    assert error.reply == "5.1.1 No such user here"
    assert str(error) == "550 5.1.1 No such user here (recipient x@y.z)"


def test_all_recipients_refused_is_temporary_if_any_refusal_was_4xx() -> None:
    mixed = smtplib.SMTPRecipientsRefused(
        {"a@example.com": (550, b"no such user"), "b@example.com": (452, b"mailbox full")}
    )
    error = classify(mixed)
    assert isinstance(error, TemporaryDeliveryError)
    assert error.code == 452
    assert "a@example.com: 550 no such user" in error.reply
    assert "b@example.com: 452 mailbox full" in error.reply
    only_permanent = smtplib.SMTPRecipientsRefused(
        {"a@example.com": (550, b"no"), "b@example.com": (553, b"no")}
    )
    assert isinstance(classify(only_permanent), PermanentDeliveryError)


def test_empty_recipients_refused_is_temporary() -> None:
    assert isinstance(classify(smtplib.SMTPRecipientsRefused({})), TemporaryDeliveryError)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        TimeoutError("timed out"),
        socket.gaierror(-2, "Name or service not known"),
        OSError(113, "No route to host"),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        smtplib.SMTPConnectError(421, b"too busy"),
        smtplib.SMTPHeloError(421, b"closing"),
        SMTPProtocolError("reply line too long"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
        smtplib.SMTPResponseException(-1, b"garbage"),
        smtplib.SMTPResponseException(354, b"unexpected"),
        RuntimeError("surprise"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_network_failures_and_odd_replies_are_temporary(exc: BaseException) -> None:
    error = classify(exc)
    assert isinstance(error, TemporaryDeliveryError)
    assert error.__cause__ is exc
    assert error.reply


@pytest.mark.parametrize(
    "exc",
    [
        smtplib.SMTPAuthenticationError(535, b"5.7.8 Authentication credentials invalid"),
        smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."),
        smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server"),
        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        smtplib.SMTPConnectError(554, b"no service"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_tls_auth_and_missing_extension_failures_are_permanent(exc: BaseException) -> None:
    error = classify(exc)
    assert isinstance(error, PermanentDeliveryError)
    assert error.__cause__ is exc


def test_auth_failure_keeps_its_code() -> None:
    error = classify(smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"))
    assert error.code == 535


def test_a_delivery_error_is_returned_unchanged() -> None:
    error = PermanentDeliveryError("x", code=550)
    assert classify(error) is error


def test_classified_error_can_be_raised_from_its_cause() -> None:
    cause = ConnectionResetError("reset")
    with pytest.raises(TemporaryDeliveryError) as info:
        raise classify(cause) from cause
    assert info.value.__cause__ is cause


# ---------------------------------------------------------------- backoff


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
