"""The value types that cross layers, and the sender protocol.

A request is rendered into a `RenderedMessage` (mailer), stored as a
`NewMessage` (db), claimed back as a `ClaimedMessage` (queue worker), sent by a
`Sender` (mailer, or a test double) into a `SendResult`, and written as an
`Outcome`; reads return a `MessageRecord`. None of them knows about HTTP, SQL or
SMTP, so storage does not import SMTP code and SMTP code does not import the
HTTP schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from service.errors import DeliveryError

__all__ = [
    "AttachmentInfo",
    "ClaimedMessage",
    "Event",
    "IdempotencyRecord",
    "MessageRecord",
    "Mode",
    "NewMessage",
    "Outcome",
    "PendingEvent",
    "RejectedRecipient",
    "RenderedMessage",
    "SendResult",
    "Sender",
    "SenderFactory",
    "Status",
    "Suppression",
]

Status = Literal["scheduled", "queued", "sending", "sent", "failed", "bounced", "cancelled"]
Mode = Literal["sync", "async"]


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


class Sender(Protocol):
    """One SMTP session's worth of sending: `service.mailer.SMTPConnection` in
    production, a test double in tests (httpx's transports are the model)."""

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        """One attempt. Raises DeliveryError; partial refusals are in the result.

        `before_dot`, when given, is called once the relay has agreed to take the
        body (its 354), before the body and its final dot go: the last moment at
        which the message can still be abandoned without the relay keeping it. It
        may block, and may raise (ShuttingDown) to abandon the transaction: then
        the session is dropped and the exception passes through unchanged.

        `next_message`, when given, is the message the caller means to send next on
        this sender: its envelope may go in the same write as this message's final
        dot (RFC 2920), which saves it a round trip. Nothing of it is committed by
        that: its own final dot still waits for its own send() and `before_dot`,
        and a sender asked next for another message drops what it sent ahead.
        """
        ...

    def offers(self, extension: str) -> bool:
        """Whether the relay advertises `extension` (e.g. "smtputf8") in EHLO."""
        ...

    @property
    def is_open(self) -> bool:
        """A session is open and clean, so a pool may hand it out again."""
        ...

    def close(self) -> None: ...


SenderFactory = Callable[[], Sender]


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """What a record says of an attachment: never its content."""

    filename: str
    content_type: str
    size: int  # decoded bytes
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a message's timeline."""

    type: str  # message.queued, message.scheduled, message.sent, message.deferred, ...
    at: float
    code: int | None = None
    detail: str | None = None
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    id: str
    mode: Mode
    rendered: RenderedMessage
    to: list[str]  # display form of the `to` field, for GET /messages/{id}
    subject: str
    key_name: str | None = None  # the API key's name that owns the record
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    send_at: float | None = None  # scheduled: due then, not before
    attachments: list[AttachmentInfo] = field(default_factory=list)
    # Idempotency: scope = "<api key fingerprint>:<Idempotency-Key>"; hash of the request body.
    idempotency_scope: str | None = None
    request_hash: str | None = None
    # For async messages the answer is known at insert time and stored for replays.
    response_code: int | None = None
    response_body: str | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    message_id: str  # our id
    request_hash: str
    response_code: int | None  # None while the first request is still in progress
    response_body: str | None


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: str
    attempt: int  # the number of this attempt (1 for the first)
    rendered: RenderedMessage


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, as the outbox writes it."""

    id: str
    attempt: int
    error: DeliveryError | None = None  # None: sent
    rejected: list[RejectedRecipient] = field(default_factory=list)
    retry_at: float | None = None  # set when the retry policy retries: queued, due then
    started_at: float = 0.0
    # When the relay answered (its 250, or the failure): the attempt's end, which
    # can be well before the batch that records it (a bounce may come in between).
    finished_at: float = 0.0

    @property
    def status(self) -> Status:
        """The message's status after this attempt."""
        if self.error is None:
            return "sent"
        return "queued" if self.error.temporary and self.retry_at is not None else "failed"

    @property
    def kind(self) -> str:
        """The attempt log's outcome: sent, temporary or permanent."""
        if self.error is None:
            return "sent"
        return "temporary" if self.error.temporary else "permanent"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    status: Status
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    sent_at: float | None
    message_id: str
    to: list[str]
    subject: str
    rejected: list[RejectedRecipient] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    send_at: float | None = None
    attachments: list[AttachmentInfo] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event claimed for its webhook, with what the webhook's body says of its
    message."""

    id: int
    record_id: str  # the message's record id
    type: str
    at: float
    attempts: int
    code: int | None
    detail: str | None
    recipient: str | None
    message_id: str  # the Message-ID header
    to: list[str]
    subject: str
    tags: list[str]
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: str  # hard_bounce | manual
    created_at: float
    message_id: str | None  # the record whose bounce or refusal listed it
