"""Builds messages and talks SMTP: TLS/SSL, AUTH, error classes, retries.

INTERFACE STUB written by the lead; the mailer owner fills it in. Other modules
rely on exactly these names and signatures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings
    from service.models import SendRequest


class DeliveryError(Exception):
    """A failed delivery. `code` is the SMTP reply code (None for network/TLS errors)."""

    temporary: bool = False

    def __init__(self, reply: str, *, code: int | None = None, recipient: str | None = None):
        super().__init__(reply)
        self.reply = reply
        self.code = code
        self.recipient = recipient


class TemporaryDeliveryError(DeliveryError):
    """Worth retrying: 4xx, connection refused/reset, timeouts."""

    temporary = True


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: 5xx, TLS verification failure, AUTH rejected."""


@dataclass(frozen=True, slots=True)
class RejectedRecipient:
    recipient: str
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A message ready for the wire: built once at acceptance and stored in the outbox."""

    message_id: str  # the Message-ID header value, with angle brackets
    mail_from: str  # envelope sender (addr-spec only)
    rcpt_tos: list[str]  # envelope recipients: to + cc + bcc, addr-spec only, deduplicated
    data: bytes  # the full message, CRLF line endings
    smtputf8: bool = False  # needs SMTPUTF8 (non-ASCII local part)


@dataclass(frozen=True, slots=True)
class SendResult:
    rejected: list[RejectedRecipient] = field(default_factory=list)


def render_message(request: SendRequest, *, default_from: str) -> RenderedMessage:
    """Build the message (Date, Message-ID, From, To, Cc, Reply-To, extra headers;
    text, or multipart/alternative with html; Bcc only in the envelope)."""
    raise NotImplementedError


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry n (n >= 1): jittered, at most min(cap, base * 2**(n-1))."""
    raise NotImplementedError


def classify(exc: BaseException, recipient: str | None = None) -> DeliveryError:
    """Map any smtplib/socket/ssl exception to Temporary- or PermanentDeliveryError."""
    raise NotImplementedError


class SMTPConnection:
    """One SMTP session that is reused across messages (RSET between transactions).

    Not thread-safe: one per delivery thread. Reconnects when the connection is
    closed, broken, idle for longer than settings.smtp_idle_timeout, answered
    421, or has carried settings.smtp_max_messages_per_connection messages.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        raise NotImplementedError

    def send(self, message: RenderedMessage) -> SendResult:
        """One attempt. Raises DeliveryError (classified). Partial recipient refusals
        are returned in SendResult.rejected; all refused raises."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ConnectionPool:
    """Thread-safe pool of idle SMTPConnection objects for the synchronous path."""

    def __init__(self, settings: Settings, *, max_idle: int = 8):
        raise NotImplementedError

    def send(self, message: RenderedMessage) -> SendResult:
        """Borrow a connection, send one attempt, give it back (or drop it on error)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def send_with_retries(
    send: Callable[[RenderedMessage], SendResult],
    message: RenderedMessage,
    *,
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_attempt: Callable[[int, DeliveryError | None], None] | None = None,
) -> SendResult:
    """The synchronous path: retry temporary failures inline with backoff; raise the
    last DeliveryError when retries are used up or the failure is permanent.
    `on_attempt(n, error_or_None)` is called after every attempt (for the attempt log)."""
    raise NotImplementedError


__all__: Sequence[str] = [
    "ConnectionPool",
    "DeliveryError",
    "PermanentDeliveryError",
    "RejectedRecipient",
    "RenderedMessage",
    "SMTPConnection",
    "SendResult",
    "TemporaryDeliveryError",
    "backoff_delay",
    "classify",
    "render_message",
    "send_with_retries",
]
