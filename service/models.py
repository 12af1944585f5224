"""Pydantic schemas of the HTTP API.

Field names and types are the contract's (../shared/contract.md). The rules that keep
a request safe to send (address syntax, one address per item, no control characters in
anything that becomes a header, RFC 5322 header names, reserved headers) are
`service.syntax`, shared with the renderer; here they become 422s naming the field.
Checks that depend on settings (MAX_RECIPIENTS, ALLOWED_SENDERS) live in
`service.api.accept`, which answers them in the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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
    "ErrorResponse",
    "HealthResponse",
    "MessageStatus",
    "RejectedRecipientModel",
    "SendRequest",
    "SendResponse",
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
]


class SendRequest(BaseModel):
    """A message to send. Every field that becomes a header is free of control characters."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"examples": _REQUEST_EXAMPLES},
    )

    to: Recipients  # a single address is accepted and becomes a one-item list
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    subject: HeaderText = ""
    body: BodyText | None = None
    html: BodyText | None = None
    from_: Address | None = Field(default=None, alias="from")
    reply_to: Address | None = None
    headers: dict[str, HeaderText] = Field(default_factory=dict)

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

    @property
    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)


class RejectedRecipientModel(BaseModel):
    recipient: str
    code: int
    message: str


class SendResponse(BaseModel):
    ok: bool
    id: str
    status: Literal["sent", "queued", "failed"]
    message_id: str | None
    error: str | None = None
    rejected: list[RejectedRecipientModel] = Field(default_factory=list)


class MessageStatus(BaseModel):
    """A message's record. Times are ISO 8601 in UTC. The body is never part of it."""

    id: str
    status: Literal["queued", "sending", "sent", "failed"]
    attempts: int
    last_error: str | None
    created_at: str
    updated_at: str
    sent_at: str | None
    message_id: str | None
    to: list[str]
    subject: str
    rejected: list[RejectedRecipientModel] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
