"""Pydantic schemas of the HTTP API.

Field names and types are the contract's (../shared/contract.md). The rules that keep
a request safe to send (address syntax, one address per item, no control characters in
anything that becomes a header, RFC 5322 header names, reserved headers) are
`service.syntax`, shared with the renderer; here they become 422s naming the field.
Checks that depend on settings (MAX_RECIPIENTS, ALLOWED_SENDERS) live in
`service.api.accept`, which answers them in the same 422 shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.syntax import (
    HEADER_TEXT_PATTERN,
    check_encodable,
    check_header_names,
    check_header_text,
    parse_address,
)

__all__ = [
    "Attachment",
    "AttachmentSummary",
    "BatchRequest",
    "BatchResponse",
    "ErrorResponse",
    "EventModel",
    "HealthResponse",
    "MessageList",
    "MessageStatus",
    "RejectedRecipientModel",
    "SendRequest",
    "SendResponse",
    "SuppressionModel",
    "SuppressionPage",
]


def _check_address(value: str) -> str:
    parse_address(value)
    return value.strip()


def _one_or_many(value: object) -> object:
    # `to` may be one address or a list; the model always holds a list.
    return [value] if isinstance(value, str) else value


# "mail-address" is our own format name (OpenAPI formats are open-ended): one address,
# `addr@domain` or `Name <addr@domain>`; the runner of schemathesis generates it.
_ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "mail-address",
    "description": "one address: addr@domain or Name <addr@domain>",
}
Address = Annotated[str, AfterValidator(_check_address), WithJsonSchema(_ADDRESS_SCHEMA)]
# The schema states the rule too, so that clients and fuzzers see it (validation itself
# is check_header_text, whose message names the character).
HeaderText = Annotated[
    str,
    AfterValidator(check_header_text),
    WithJsonSchema({"type": "string", "pattern": HEADER_TEXT_PATTERN}),
]
BodyText = Annotated[str, AfterValidator(check_encodable)]
Recipients = Annotated[
    list[Address],
    BeforeValidator(_one_or_many),
    Field(min_length=1),
    # The schema shows both accepted forms; the model always holds a list.
    WithJsonSchema(
        {
            "anyOf": [
                _ADDRESS_SCHEMA,
                {"type": "array", "items": _ADDRESS_SCHEMA, "minItems": 1},
            ],
            "title": "To",
        }
    ),
]


# Stored and returned, never written into the message (so free of header rules).
Tag = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="letters, digits, '_', '.', '-'; 1 to 64",
        examples=["receipt"],
    ),
]
MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
STATUSES = ("scheduled", "queued", "sending", "sent", "failed", "bounced", "cancelled")
StatusName = Literal["scheduled", "queued", "sending", "sent", "failed", "bounced", "cancelled"]


def _decode_base64(value: object) -> object:
    """The content's bytes, decoded once here: the text (a third larger) is let go
    as soon as the request is parsed."""
    if not isinstance(value, str):
        return value
    try:
        # validate=True: a character outside the alphabet is an error, not skipped.
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "content is not valid base64 (the standard alphabet, padded with '='; no line breaks)"
        ) from None


def _strip(value: object) -> object:
    # Mail clients drop the spaces around a file name: keep what they will show.
    return value.strip() if isinstance(value, str) else value


def _check_content_type(value: str) -> str:
    if not _CONTENT_TYPE.fullmatch(value):
        raise ValueError("content_type must be a MIME type such as application/pdf")
    return value.lower()


# RFC 2045 token characters, type/subtype, no parameters.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,127}")
Base64Content = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "base64"}),
]
ContentType = Annotated[str, AfterValidator(_check_content_type)]
ContentId = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=r"^[\x21-\x3b\x3d\x3f-\x7e]+$"),
]


class Attachment(BaseModel):
    """A file sent with the message; with `content_id` it is inline, shown by the HTML
    where it says `cid:<content_id>`."""

    model_config = ConfigDict(
        extra="forbid",
        ser_json_bytes="base64",
        json_schema_extra={
            "examples": [
                {"filename": "invoice.pdf", "content": "JVBERi0xLjQK"},
                {"filename": "logo.png", "content": "iVBORw0KGgo=", "content_id": "logo"},
            ]
        },
    )

    filename: Annotated[HeaderText, BeforeValidator(_strip)] = Field(
        min_length=1,
        max_length=255,
        description="the name shown to the recipient (spaces around it are dropped); "
        "non-ASCII travels encoded (RFC 2231)",
    )
    content: Base64Content
    content_type: ContentType | None = Field(
        default=None, description="a MIME type; guessed from the filename when absent"
    )
    content_id: ContentId | None = Field(
        default=None,
        description='makes it inline: the HTML shows it with src="cid:<content_id>" '
        "(printable ASCII, no '<', '>' or space)",
    )

    @model_validator(mode="before")
    @classmethod
    def _take_content(cls, data: object) -> object:
        """Take the base64 text out of the parsed request (FastAPI keeps that dict for
        the whole request), so that it is let go as soon as it is decoded instead of
        staying beside the file and the message built from it."""
        if isinstance(data, dict) and isinstance(data.get("content"), str):
            return {**data, "content": data.pop("content")}
        return data


_REQUEST_EXAMPLES: list[JsonValue] = [
    {"to": "ana@example.com", "subject": "Hello", "body": "Plain text."},
    {
        "to": ["Ana Lopez <ana@example.com>", '"Doe, Jane" <jane@example.org>'],
        "cc": ["team@example.com"],
        "bcc": ["audit@example.com"],
        "subject": "Quarterly report",
        "body": "The text part.",
        "html": "<p>The <b>HTML</b> part.</p>",
        "reply_to": "support@example.com",
        "headers": {"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsub@example.com>"},
    },
    {"to": "jörg@bücher.de", "subject": "Grüße", "html": "<p>Hallo</p>"},
    {
        "to": "ana@example.com",
        "subject": "Your invoice",
        "body": "Thanks for your order.",
        "tags": ["invoice", "eu-west"],
        "metadata": {"order_id": "A-1042", "customer": "981"},
        "send_at": "2026-12-24T09:00:00+01:00",
    },
]


class SendRequest(BaseModel):
    """A message to send. Every field that becomes a header is free of control characters."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"examples": _REQUEST_EXAMPLES},
    )

    # A single address is accepted and becomes a one-item list.
    to: Recipients = Field(description="one address or a list: the To header and envelope")
    cc: list[Address] = Field(default_factory=list, description="the Cc header and envelope")
    bcc: list[Address] = Field(
        default_factory=list, description="the envelope only: never written in a header"
    )
    subject: HeaderText = Field(default="", description="no CR, LF or other control character")
    body: BodyText | None = Field(
        default=None, description="the plain-text part; give body, html or both"
    )
    html: BodyText | None = Field(
        default=None, description="the HTML part; with body, the two are alternatives"
    )
    from_: Address | None = Field(
        default=None, alias="from", description="the sender; MAIL_FROM when absent"
    )
    reply_to: Address | None = Field(default=None, description="the Reply-To header")
    headers: dict[str, HeaderText] = Field(
        default_factory=dict,
        description="extra header fields, e.g. List-Unsubscribe; the ones we set "
        "(From, To, Date, Message-ID, MIME ...) are refused",
    )
    attachments: list[Attachment] = Field(
        default_factory=list,
        description="Files to attach (base64). The built message, attachments included, "
        "is held to MAX_MESSAGE_BYTES (413).",
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=10,
        description="Up to 10 labels to find the message by (GET /messages?tag=); "
        "stored, never written into the message.",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=20,
        description="Up to 20 string keys (1-64 characters) to string values (at most 512), "
        "returned in records and events; never written into the message.",
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="/send_async and /send_batch only: an RFC 3339 time with an offset, "
        "at most 30 days ahead; the message waits, `scheduled`, until then (a time in "
        "the past means now).",
        examples=["2026-12-24T09:00:00+01:00"],
    )

    @field_validator("headers")
    @classmethod
    def _check_header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        check_header_names(headers)
        return headers

    @model_validator(mode="after")
    def _has_content(self) -> SendRequest:
        if self.body is None and self.html is None:
            raise ValueError("give at least one of 'body' and 'html'")
        return self

    @field_validator("tags")
    @classmethod
    def _each_tag_once(cls, tags: list[str]) -> list[str]:
        # A tag given twice is the same label: kept once, in its first place.
        return list(dict.fromkeys(tags))

    @field_validator("attachments")
    @classmethod
    def _check_attachments(cls, attachments: list[Attachment]) -> list[Attachment]:
        seen: set[str] = set()
        for n, attachment in enumerate(attachments):
            cid = attachment.content_id
            if cid is None:
                continue
            if cid in seen:
                raise ValueError(f"attachment {n}: content_id {cid!r} is given twice")
            seen.add(cid)
        return attachments

    @model_validator(mode="after")
    def _inline_needs_html(self) -> SendRequest:
        if self.html is None and any(a.content_id for a in self.attachments):
            raise ValueError(
                "an attachment with content_id is inline and shown by the html: give 'html', "
                "or leave content_id out to attach it"
            )
        return self

    @property
    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)


class RejectedRecipientModel(BaseModel):
    """A recipient the relay refused while it took the others."""

    recipient: str = Field(description="the refused address")
    code: int = Field(description="the relay's reply code", examples=[550])
    message: str = Field(description="the relay's reply text")


class SendResponse(BaseModel):
    """What a send answers."""

    ok: bool = Field(description="true unless the message failed")
    id: str = Field(description="the record's id: GET /messages/{id}")
    status: Literal["sent", "queued", "scheduled", "failed"] = Field(
        description="sent (/send), queued or scheduled (/send_async, /send_batch), failed"
    )
    message_id: str | None = Field(description="the Message-ID header the message carries")
    error: str | None = Field(default=None, description="why it failed, with the relay's code")
    rejected: list[RejectedRecipientModel] = Field(
        default_factory=list, description="recipients refused while others were accepted"
    )


class AttachmentSummary(BaseModel):
    """An attachment as a record lists it: never its content."""

    filename: str = Field(description="as given")
    content_type: str = Field(description="as given or guessed from the filename")
    size: int = Field(description="decoded bytes")
    content_id: str | None = Field(default=None, description="set for an inline file")


class EventModel(BaseModel):
    """One entry of a message's timeline."""

    type: str = Field(
        description="message.scheduled, message.queued, message.sent, message.deferred, "
        "message.failed, message.bounced or message.cancelled",
        examples=["message.sent"],
    )
    at: str = Field(description="ISO 8601, UTC")
    code: int | None = Field(default=None, description="the relay's reply code, when it gave one")
    detail: str | None = Field(default=None, description="the relay's reply or the error")
    recipient: str | None = Field(default=None, description="the recipient it concerns, if one")


class MessageStatus(BaseModel):
    """A message's record. Times are ISO 8601 in UTC. The body is never part of it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "019ad4c1f2a87b3c9e0d1f2a3b4c5d6e",
                    "status": "sent",
                    "attempts": 1,
                    "last_error": None,
                    "created_at": "2026-12-01T10:00:00.000+00:00",
                    "updated_at": "2026-12-01T10:00:00.120+00:00",
                    "sent_at": "2026-12-01T10:00:00.120+00:00",
                    "message_id": "<019ad4c1f2a87b3c9e0d1f2a3b4c5d6e@example.com>",
                    "to": ["ana@example.com"],
                    "subject": "Your invoice",
                    "rejected": [],
                    "tags": ["invoice"],
                    "metadata": {"order_id": "A-1042"},
                    "send_at": None,
                    "attachments": [
                        {
                            "filename": "invoice.pdf",
                            "content_type": "application/pdf",
                            "size": 48213,
                            "content_id": None,
                        }
                    ],
                    "events": [
                        {"type": "message.queued", "at": "2026-12-01T10:00:00.000+00:00"},
                        {"type": "message.sent", "at": "2026-12-01T10:00:00.120+00:00"},
                    ],
                }
            ]
        }
    )

    id: str = Field(description="the record's id")
    status: StatusName = Field(
        description="scheduled, queued, sending, sent, failed, bounced or cancelled"
    )
    attempts: int = Field(description="delivery attempts made so far")
    last_error: str | None = Field(description="the last failure, with the relay's code")
    created_at: str = Field(description="when it was accepted")
    updated_at: str = Field(description="when the record last changed")
    sent_at: str | None = Field(description="when the relay accepted it")
    message_id: str | None = Field(description="its Message-ID header")
    to: list[str] = Field(description="the `to` of the request")
    subject: str = Field(description="the subject")
    rejected: list[RejectedRecipientModel] = Field(
        default_factory=list, description="recipients refused while others were accepted"
    )
    tags: list[str] = Field(default_factory=list, description="the request's tags")
    metadata: dict[str, str] = Field(default_factory=dict, description="the request's metadata")
    send_at: str | None = Field(default=None, description="when it was scheduled for, UTC")
    attachments: list[AttachmentSummary] = Field(
        default_factory=list, description="the files it carries, never their content"
    )
    events: list[EventModel] = Field(default_factory=list, description="its timeline, oldest first")


class MessageList(BaseModel):
    """One page of GET /messages, newest first."""

    messages: list[MessageStatus] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` (with the same filters) for the next page; "
        "null on the last page"
    )


class SuppressionModel(BaseModel):
    """An address no message goes to: sends naming it are refused with a 422."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "address": "gone@example.com",
                    "reason": "hard_bounce",
                    "created_at": "2026-12-01T10:00:00.000+00:00",
                    "message_id": "019ad4c1f2a87b3c9e0d1f2a3b4c5d6e",
                }
            ]
        }
    )

    address: str = Field(description="the address, lower-cased")
    reason: Literal["hard_bounce", "manual"] = Field(
        description="hard_bounce: a bounce or a permanent refusal of the relay; "
        "manual: added with PUT /suppressions/{address}"
    )
    created_at: str = Field(description="when it was listed, ISO 8601 in UTC")
    message_id: str | None = Field(
        description="the record id of the message whose bounce or refusal listed it"
    )


class SuppressionPage(BaseModel):
    """One page of GET /suppressions, newest first."""

    suppressions: list[SuppressionModel] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )


class BatchRequest(BaseModel):
    """Several messages, each queued as by /send_async; all of them or none."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"to": "ana@example.com", "subject": "Receipt 1", "body": "Thanks."},
                        {
                            "to": "ben@example.org",
                            "subject": "Receipt 2",
                            "body": "Thanks.",
                            "tags": ["receipt"],
                        },
                    ]
                }
            ]
        },
    )

    messages: list[SendRequest] = Field(
        min_length=1, description="1 to BATCH_MAX (default 500) messages"
    )


class BatchResponse(BaseModel):
    """One result per message, in request order."""

    results: list[SendResponse] = Field(description="one per message, in request order")


class ErrorResponse(BaseModel):
    """Every refusal but a 422 (whose detail is FastAPI's list of field errors)."""

    detail: str = Field(description="what went wrong and what to do")


class HealthResponse(BaseModel):
    status: Literal["ok"] = Field(description="always ok: the process answers")
