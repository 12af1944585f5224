"""classify: every smtplib, socket and ssl failure as a Temporary- or
PermanentDeliveryError. The mailer classifies; the retry policy decides."""

from __future__ import annotations

import smtplib
import ssl

from service.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError

__all__ = ["SMTPProtocolError", "classify", "reply_text"]


class SMTPProtocolError(smtplib.SMTPException):
    """The server broke the protocol: an over-long reply line or an endless reply."""


def reply_text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


def _by_code(code: int, reply: str, recipient: str | None) -> DeliveryError:
    # 5xx is permanent; 4xx, and anything that is not a proper reply code (garbage,
    # an unexpected 2xx/3xx), is temporary: retries are bounded, and a lost message
    # is worse than one more attempt.
    if 500 <= code <= 599:
        return PermanentDeliveryError(reply, code=code, recipient=recipient)
    return TemporaryDeliveryError(reply, code=code if code > 0 else None, recipient=recipient)


def _classify(exc: BaseException, recipient: str | None) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = [(r, c, reply_text(m)) for r, (c, m) in exc.recipients.items()]
        if not refused:
            return TemporaryDeliveryError("all recipients refused", recipient=recipient)
        temporary = [item for item in refused if not 500 <= item[1] <= 599]
        rcpt, code, text = (temporary or refused)[0]
        error = _by_code(code, text, rcpt if len(refused) == 1 else recipient)
        if len(refused) > 1:
            error.reply = "all recipients refused: " + "; ".join(
                f"{r}: {c} {t}" for r, c, t in refused
            )
        error.refused = refused
        return error
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, reply_text(exc.smtp_error), recipient)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # The relay lacks something we must have (STARTTLS, AUTH, SMTPUTF8): waiting
        # will not add it.
        return PermanentDeliveryError(str(exc), recipient=recipient)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TemporaryDeliveryError(f"connection lost: {exc}", recipient=recipient)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError(
            f"TLS certificate not trusted: {getattr(exc, 'verify_message', None) or exc}",
            recipient=recipient,
        )
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        # The peer closed the connection under TLS: a lost connection, not a bad setup.
        return TemporaryDeliveryError(f"TLS connection closed: {exc}", recipient=recipient)
    if isinstance(exc, ssl.SSLError):
        return PermanentDeliveryError(f"TLS handshake failed: {exc}", recipient=recipient)
    if isinstance(exc, TimeoutError):
        return TemporaryDeliveryError(f"timed out: {exc}", recipient=recipient)
    if isinstance(exc, ConnectionRefusedError):
        return TemporaryDeliveryError(f"connection refused: {exc}", recipient=recipient)
    if isinstance(exc, OSError):
        # Resets, broken pipes, unreachable networks, DNS failures: all can heal.
        return TemporaryDeliveryError(f"network error: {exc}", recipient=recipient)
    # Unknown failures (an unexpected smtplib state, a bug): retried, since the retry
    # budget is bounded and dropping mail on a surprise is the worse outcome.
    return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}", recipient=recipient)


def classify(exc: BaseException, recipient: str | None = None) -> DeliveryError:
    """Map any smtplib/socket/ssl exception to Temporary- or PermanentDeliveryError.

    The result has `exc` as its __cause__; callers still write `raise err from exc`.
    """
    error = _classify(exc, recipient)
    if error is not exc:
        error.__cause__ = exc
    return error
