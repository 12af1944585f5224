"""classify: every smtplib, socket and ssl failure as a temporary or permanent DeliveryError."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.mailer import (
    PermanentDeliveryError,
    SMTPProtocolError,
    TemporaryDeliveryError,
    classify,
)

pytestmark = pytest.mark.unit


def refusals(code: int, text: str) -> list[smtplib.SMTPException]:
    """The reply `code` as each smtplib exception that carries one."""
    return [
        smtplib.SMTPResponseException(code, text.encode()),
        smtplib.SMTPSenderRefused(code, text.encode(), "a@example.com"),
        smtplib.SMTPDataError(code, text),
        smtplib.SMTPRecipientsRefused({"b@example.com": (code, text.encode())}),
    ]


@given(code=st.integers(400, 499), text=st.text(max_size=40))
def test_every_4xx_reply_is_temporary(code: int, text: str) -> None:
    for exc in refusals(code, text):
        error = classify(exc, "b@example.com")
        assert isinstance(error, TemporaryDeliveryError)
        assert error.code == code
        assert error.recipient == "b@example.com"
        assert error.__cause__ is exc


@given(code=st.integers(500, 599), text=st.text(max_size=40))
def test_every_5xx_reply_is_permanent(code: int, text: str) -> None:
    for exc in refusals(code, text):
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
