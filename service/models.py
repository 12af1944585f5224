"""Pydantic schemas of the HTTP API, and the validation that keeps requests safe to send.

Field names and types are the contract's (../shared/contract.md). What is checked here
needs no settings: address syntax, one address per item, no control characters in
anything that becomes a header (no header injection), RFC 5322 header names, reserved
headers, at least one of body/html. Checks that depend on settings (MAX_RECIPIENTS,
ALLOWED_SENDERS) live in `service.app`, which answers them in the same 422 shape.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
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

__all__ = [
    "ErrorResponse",
    "HealthResponse",
    "MessageStatus",
    "RejectedRecipientModel",
    "SendRequest",
    "SendResponse",
    "canonical_address",
    "parse_address",
]

# Header fields the service writes itself, mapped to what a request uses instead. A
# caller-supplied copy would either duplicate ours or let a leaked key forge routing.
RESERVED_HEADERS: dict[str, str] = {
    "from": "use the request field 'from'",
    "to": "use the request field 'to'",
    "cc": "use the request field 'cc'",
    "bcc": "use the request field 'bcc'",
    "reply-to": "use the request field 'reply_to'",
    "subject": "use the request field 'subject'",
    "message-id": "the service sets it (the answer carries it as 'message_id')",
    "date": "the service sets it",
    "mime-version": "the service sets it",
    "sender": "the service sets the sender from 'from'",
    "return-path": "the relay sets it from the envelope sender",
    "received": "relays add it",
}
_CONTENT_HEADER_HINT = "the service sets it from 'body' and 'html'"

# RFC 5322 3.6.8: field-name = 1*ftext, ftext = printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Longest header name accepted: a header line must stay under 998 octets, and no
# legitimate extension header comes near this.
MAX_HEADER_NAME = 76
# RFC 5322 "specials" that may not appear in an unquoted display name ("." is allowed
# there by the obsolete syntax every mail client still accepts).
_PHRASE_SPECIALS = frozenset('()<>[]:;@\\,"')
_LOCALHOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*localhost")
# RFC 5322 quoted-string: quotes around anything, with '"' and '\' escaped by a backslash.
_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


# Characters that may not appear in a header-bound value, by Unicode category: Cc (C0
# and C1 controls incl. CR, LF, NUL, TAB, DEL), Zl and Zp (U+2028, U+2029, which some
# software treats as line breaks), Cs (lone surrogates, which cannot be encoded). As a
# regular expression, so that a value of megabytes is checked at C speed, not char by
# char; tests/api/test_models.py holds it to unicodedata over every code point.
_HEADER_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_character(value: str) -> str | None:
    """The first character that may not appear in a header-bound value, described."""
    found = _HEADER_FORBIDDEN.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def _no_control_characters(value: str) -> str:
    bad = _bad_character(value)
    if bad is not None:
        raise ValueError(f"control character {bad} is not allowed (no header injection)")
    return value


def _encodable(value: str) -> str:
    """Bodies may hold any text, but a lone surrogate cannot be encoded as UTF-8."""
    found = _SURROGATE.search(value)
    if found is not None:
        raise ValueError(f"lone surrogate U+{ord(found.group()):04X} is not valid text")
    return value


def _split_outside_quotes(value: str) -> list[str]:
    """Split on "," and ";" that are outside quoted strings and angle brackets."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and char in ",;":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _check_display_name(name: str) -> str:
    if name.startswith('"'):
        if not _QUOTED_STRING.fullmatch(name):
            raise ValueError(
                'a quoted display name must end with its closing quote; inside it, write " '
                'and \\ as \\" and \\\\'
            )
        return name
    bad = sorted(set(name) & _PHRASE_SPECIALS)
    if bad:
        raise ValueError(
            f"the display name contains {' '.join(bad)}: put it in double quotes, "
            'e.g. "Doe, Jane" <jane@example.com>'
        )
    return name


def _validate_addr_spec(addr: str) -> tuple[str, str]:
    """(local part, domain) of a syntactically valid addr-spec, domain in ASCII lower case.

    email-validator refuses special-use domains; "localhost" is one, yet it is MAIL_FROM's
    default and what development relays accept, so it (and its subdomains) pass here.
    """
    local, at, domain = addr.rpartition("@")
    lowered = domain.lower()
    is_local = bool(at) and _LOCALHOST.fullmatch(lowered) is not None
    probe = f"{local}@example.com" if is_local else addr
    result = validate_email(probe, check_deliverability=False, allow_smtputf8=True)
    ascii_domain = lowered if is_local else (result.ascii_domain or result.domain).lower()
    return result.local_part, ascii_domain


def parse_address(value: str) -> tuple[str, str]:
    """Split `addr`, `Name <addr>` or `"Quoted, Name" <addr>` into (display name, addr-spec).

    Raises ValueError with a message fit for a 422. The display name is returned as
    written (quotes included); the addr-spec is checked with email-validator (syntax
    only, IDN domains and non-ASCII local parts allowed) and returned as given.
    """
    _no_control_characters(value)
    text = value.strip()
    if not text:
        raise ValueError("an address is empty")
    if len(_split_outside_quotes(text)) > 1:
        raise ValueError(
            "one address per item: send several recipients as a JSON list, "
            'e.g. ["a@example.com", "b@example.com"]'
        )
    name = ""
    addr = text
    if text.endswith(">"):
        start = text.rfind("<")
        if start < 0:
            raise ValueError("'>' without a matching '<'")
        name = text[:start].strip()
        addr = text[start + 1 : -1].strip()
        if name:
            _check_display_name(name)
    elif "<" in text or ">" in text:
        raise ValueError("write a named address as Name <addr@example.com>")
    try:
        _validate_addr_spec(addr)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return name, addr


def canonical_address(addr_spec: str) -> str:
    """Comparable form of an addr-spec: the local part as written, the domain in
    lower-case ASCII (IDNA), so that ALLOWED_SENDERS matches however it is typed."""
    local, domain = _validate_addr_spec(addr_spec)
    return f"{local}@{domain}"


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
# is _no_control_characters, whose message names the character).
_NO_CONTROL_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$"
HeaderText = Annotated[
    str,
    AfterValidator(_no_control_characters),
    WithJsonSchema({"type": "string", "pattern": _NO_CONTROL_PATTERN}),
]
BodyText = Annotated[str, AfterValidator(_encodable)]
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
        seen: set[str] = set()
        for name in headers:
            if len(name) > MAX_HEADER_NAME or not _FIELD_NAME.fullmatch(name):
                raise ValueError(
                    f"{name[:MAX_HEADER_NAME]!r} is not a header field name (RFC 5322: "
                    f"1 to {MAX_HEADER_NAME} printable ASCII characters, no ':' or space)"
                )
            lower = name.lower()
            if lower in RESERVED_HEADERS or lower.startswith("content-"):
                hint = RESERVED_HEADERS.get(lower, _CONTENT_HEADER_HINT)
                raise ValueError(f"header {name!r} is reserved: {hint}")
            if lower in seen:
                raise ValueError(f"header {name!r} is given twice (names ignore case)")
            seen.add(lower)
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
