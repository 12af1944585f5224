"""render_message: a validated request into the bytes that go on the wire, once.

Addresses are parsed with the shared rules (`service.syntax`) and checked again
here, so that rendering is safe on its own; the encoding itself is
`service.mailer.encode`.
"""

from __future__ import annotations

import functools
import mimetypes
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from typing import TYPE_CHECKING, Any

from service import syntax
from service.ids import new_id
from service.mailer import encode
from service.types import RenderedMessage

if TYPE_CHECKING:
    from service.models import SendRequest

__all__ = ["file_parts", "render_message"]


@dataclass(frozen=True, slots=True)
class _Address:
    display_name: str  # unquoted, may be non-ASCII
    addr_spec: str  # local@ascii-domain: what the envelope and the headers carry
    local: str
    domain: str  # ASCII (IDNA) lower case
    smtputf8: bool  # the local part is not ASCII


# A plain ASCII dot-atom addr-spec with a host-name domain: a strict subset of what
# the API accepts, safe in a header as it stands, so it needs no further parsing.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> _Address:
    """One address as the API accepts it (`a@x`, `Name <a@x>`, `"Q, N" <a@x>`).

    Cached: senders repeat on every message, and parsing with email-validator is the
    largest part of rendering a small message.
    """
    local, _, domain = value.rpartition("@")
    if len(value) <= 254 and len(local) <= 64 and _PLAIN_ADDRESS.fullmatch(value):
        domain = domain.lower()
        return _Address("", f"{local}@{domain}", local, domain, smtputf8=False)
    syntax.check_header_text(value, "an address")
    name, addr = syntax.parse_address(value)
    canonical = syntax.canonical_address(addr)
    local, _, domain = canonical.rpartition("@")
    if name.startswith('"') and name.endswith('"') and len(name) >= 2:
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return _Address(
        display_name=name,
        addr_spec=canonical,
        local=local,
        domain=domain,
        smtputf8=not local.isascii(),
    )


def _parse_all(values: Sequence[str], what: str) -> list[_Address]:
    parsed = []
    for value in values:
        try:
            parsed.append(_parse(value))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    return parsed


def _format(address: _Address) -> str:
    # formataddr quotes a name that needs it and RFC 2047-encodes a non-ASCII one.
    return formataddr((address.display_name, address.addr_spec))


def _date_now() -> str:
    return _date_header(int(time.time()))


@functools.lru_cache(maxsize=2)
def _date_header(epoch_seconds: int) -> str:
    # A Date header has whole seconds, and formatting one costs more than the rest of
    # a small message's headers: format once per second.
    return format_datetime(datetime.fromtimestamp(epoch_seconds, UTC))


@dataclass(frozen=True, slots=True)
class _Parties:
    sender: _Address
    to: list[_Address]
    cc: list[_Address]
    bcc: list[_Address]
    reply_to: list[_Address]

    @property
    def rcpt_tos(self) -> list[str]:
        """The envelope: to, cc and bcc, each address once, in that order."""
        return list(dict.fromkeys(a.addr_spec for a in (*self.to, *self.cc, *self.bcc)))

    @property
    def smtputf8(self) -> bool:
        return any(a.smtputf8 for a in (self.sender, *self.to, *self.cc, *self.bcc, *self.reply_to))


def _parties(request: SendRequest, default_from: str) -> _Parties:
    parties = _Parties(
        sender=_parse_all([request.from_ or default_from], "from")[0],
        to=_parse_all(request.to, "to"),
        cc=_parse_all(request.cc, "cc"),
        bcc=_parse_all(request.bcc, "bcc"),
        reply_to=_parse_all([request.reply_to], "reply_to") if request.reply_to else [],
    )
    if not parties.to and not parties.cc and not parties.bcc:
        raise ValueError("no recipients")
    return parties


def _extra_headers(request: SendRequest) -> list[tuple[str, str]]:
    syntax.check_header_text(request.subject, "subject")
    syntax.check_header_names(request.headers)
    for name, value in request.headers.items():
        syntax.check_header_text(value, f"header {name}")
    return list(request.headers.items())


def render_message(
    request: SendRequest,
    *,
    default_from: str,
    now: datetime | None = None,
    record_id: str | None = None,
) -> RenderedMessage:
    """Build the message (Date, Message-ID, From, To, Cc, Reply-To, extra headers;
    text, or multipart/alternative with html; Bcc only in the envelope).

    Raises ValueError for anything that could not be sent safely (a bad address, a
    control character in a header, a reserved or malformed extra header), even though
    the API validates the same things first. `now` fixes the Date header (tests);
    `record_id` is the local part of the Message-ID (a new id when not given).
    """
    parties = _parties(request, default_from)
    extra = _extra_headers(request)
    files = file_parts(request)
    smtputf8 = parties.smtputf8
    message_id = f"<{record_id or new_id()}@{parties.sender.domain}>"
    date = format_datetime(now) if now is not None else _date_now()
    top = [("Date", date), ("Subject", request.subject), ("Message-ID", message_id)]
    p = parties
    # Only text that may be split matters for folding: an addr-spec or a Message-ID is
    # one unbreakable token on either path. "Reply-To" stands for every address header
    # (the longest name).
    foldable = [("Subject", request.subject), *extra]
    foldable += [("Reply-To", a.display_name) for a in (p.sender, *p.to, *p.cc, *p.reply_to)]
    if files or smtputf8 or not all(encode.compat32_folds(name, value) for name, value in foldable):
        # The modern policy: it writes non-ASCII local parts as raw UTF-8 (RFC 6532;
        # they cannot be RFC 2047-encoded), splits over-long words, and builds the
        # multipart structure of a message with files.
        modern = _headers(top, parties, _header_addresses) + extra
        data = encode.render_policy(modern, request.body, request.html, utf8=smtputf8, files=files)
    else:
        plain = _headers(top, parties, _header_text) + extra
        if encode.fast_body_ok(request.body) and encode.fast_body_ok(request.html):
            data = encode.render_fast(plain, request.body, request.html)
        else:
            data = encode.render_compat32(plain, request.body, request.html)
    return RenderedMessage(
        message_id=message_id,
        mail_from=parties.sender.addr_spec,
        rcpt_tos=parties.rcpt_tos,
        data=data,
        smtputf8=smtputf8,
    )


# Python's own table of file types, not the host's /etc/mime.types (which
# mimetypes.guess_type also reads): the same filename gets the same type on every
# machine ("x.a" is text/vnd.a on a Debian box with media-types installed).
_TYPES = mimetypes.MimeTypes()


def file_parts(request: SendRequest) -> list[encode.FilePart]:
    """The request's attachments, each with its content type (guessed from the
    filename when not given; application/octet-stream when nothing is known)."""
    return [
        encode.FilePart(
            filename=a.filename,
            content_type=a.content_type
            or _TYPES.guess_type(a.filename, strict=False)[0]
            or "application/octet-stream",
            content=a.content,
            content_id=a.content_id,
        )
        for a in request.attachments
    ]


def _header_text(items: list[_Address]) -> str:
    return ", ".join(map(_format, items))


def _header_addresses(items: list[_Address]) -> list[Address]:
    return [Address(a.display_name, a.local, a.domain) for a in items]


def _headers(
    top: list[tuple[str, str]], parties: _Parties, form: Callable[[list[_Address]], Any]
) -> list[tuple[str, Any]]:
    """Date, From, To, Cc, Reply-To, Subject, Message-ID, in that order, each address
    header in `form`; empty address headers left out (Subject is always there)."""
    (_, date), (_, subject), (_, message_id) = top
    headers: list[tuple[str, Any]] = [
        ("Date", date),
        ("From", form([parties.sender])),
        ("To", form(parties.to)),
        ("Cc", form(parties.cc)),
        ("Reply-To", form(parties.reply_to)),
        ("Subject", subject),
        ("Message-ID", message_id),
    ]
    return [(n, v) for n, v in headers if v or n == "Subject"]
