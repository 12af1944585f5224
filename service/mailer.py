"""Builds messages and talks SMTP: TLS/SSL, AUTH, error classes, retries.

Three jobs, each kept small:

* `render_message` turns a validated SendRequest into the bytes that go on the wire,
  once, at acceptance. The common case (ASCII addresses, foldable headers) is built
  with the email package's compat32 classes, about five times cheaper than
  `EmailMessage` with `policy.default`; anything unusual (non-ASCII local parts, which
  need raw UTF-8 headers, or header words too long for compat32 to fold) takes the
  modern policy path. The compat32 case is written directly (`_render_fast`: header
  lines folded exactly as compat32 folds them, bodies encoded with binascii), a
  property test holding it to the compat32 classes' output; bodies with CR take
  the classes themselves.
* `classify` maps every smtplib/socket/ssl failure to a Temporary- or
  PermanentDeliveryError; the worker decides what to do with it.
* `SMTPConnection` keeps one SMTP session open across messages and bounds every wait
  on a hostile or dead server with a deadline, not just a per-recv timeout.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import logging
import random
import re
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import charset as _charset
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr
from typing import TYPE_CHECKING, Any

from service.ids import new_id
from service.models import RESERVED_HEADERS, canonical_address, parse_address

if TYPE_CHECKING:
    from service.config import Settings
    from service.models import SendRequest

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A failed delivery. `code` is the SMTP reply code (None for network/TLS errors)."""

    temporary: bool = False

    def __init__(self, reply: str, *, code: int | None = None, recipient: str | None = None):
        super().__init__(reply)
        self.reply = reply
        self.code = code
        self.recipient = recipient

    def __str__(self) -> str:
        text = self.reply
        if self.code is not None and not text.startswith(str(self.code)):
            text = f"{self.code} {text}"
        if self.recipient is not None:
            text = f"{text} (recipient {self.recipient})"
        return text


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


# --------------------------------------------------------------------------- rendering

# Anything that could end a header line or that a mail system may treat as a line
# break: C0/C1 controls (CR, LF, NUL, TAB, ...), U+2028/U+2029 (str.splitlines, which
# the compat32 folder uses, splits on them) and lone surrogates. The same set as the
# API's validation (service.models), checked again so render_message is safe alone.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# RFC 5322 3.6.8: field-name = 1*ftext, ftext = printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
# RFC 5322 2.1.1: header lines SHOULD stay within 78 characters.
_FOLD_WIDTH = 78
# RFC 5321 4.5.3.1.6: a text line is at most 998 octets plus CRLF.
_MAX_LINE = 998
# A line of the fast path's text over _MAX_LINE characters (the text has no CR there):
# a regular-expression search, tried at line starts only, instead of a Python loop
# over the lines (as fast for a text of many short lines, and for one long line
# thousands of times faster).
_OVERLONG_LINE = re.compile(rf"(?m)^[^\n]{{{_MAX_LINE + 1}}}")

_ASCII_BYTES = bytes(range(128))
_COMPAT32 = email.policy.compat32.clone(linesep="\r\n")
# The modern path: SMTP line endings, and 7bit transfer encodings so the message needs
# no 8BITMIME; the SMTPUTF8 variant writes addresses as raw UTF-8 (RFC 6532).
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_POLICY_UTF8 = email.policy.SMTPUTF8


@dataclass(frozen=True, slots=True)
class _Address:
    display_name: str  # unquoted, may be non-ASCII
    addr_spec: str  # local@ascii-domain: what the envelope and the headers carry
    local: str
    domain: str  # ASCII (IDNA) lower case
    smtputf8: bool  # the local part is not ASCII


def _check_header_text(what: str, value: str) -> None:
    match = _HEADER_UNSAFE.search(value)
    if match is not None:
        raise ValueError(
            f"{what} contains control character U+{ord(match.group()):04X} (no header injection)"
        )


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
    _check_header_text("an address", value)
    name, addr = parse_address(value)
    canonical = canonical_address(addr)
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


def _extra_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name[:80]!r} is not a header field name")
        if lower in RESERVED_HEADERS or lower.startswith("content-") or lower in seen:
            raise ValueError(f"header {name!r} is reserved or repeated")
        seen.add(lower)
        _check_header_text(f"header {name}", value)
    return list(headers.items())


def _compat32_folds(name: str, value: str) -> bool:
    """Whether compat32 can fold this header within 78 columns.

    compat32 folds only at whitespace. A word too long for the first line after
    "Name: " is pushed to a continuation line, leaving a value that unfolds with a
    leading space; one longer than a whole line is left over-long. Either way the
    message takes the modern policy, which splits long words into encoded-words.
    """
    limit = _FOLD_WIDTH - len(name) - 2
    return all(len(word) <= limit for word in value.split())


def _format(address: _Address) -> str:
    # formataddr quotes a name that needs it and RFC 2047-encodes a non-ASCII one.
    return formataddr((address.display_name, address.addr_spec))


def _charset_for(text: str) -> _charset.Charset | str:
    """us-ascii (7bit) for plain short-lined text, else UTF-8 in QP or base64,
    whichever is shorter for this text (the same choice policy.default makes)."""
    if text.isascii() and all(len(line) <= _MAX_LINE for line in text.splitlines()):
        return "us-ascii"
    data = text.encode()
    high = len(data.translate(None, _ASCII_BYTES))  # bytes QP must write as "=XX"
    return _utf8_qp() if len(data) + 2 * high <= len(data) * 4 / 3 else _utf8_base64()


@functools.cache
def _utf8_qp() -> _charset.Charset:
    cs = _charset.Charset("utf-8")
    cs.body_encoding = _charset.QP
    return cs


@functools.cache
def _utf8_base64() -> _charset.Charset:
    cs = _charset.Charset("utf-8")
    cs.body_encoding = _charset.BASE64
    return cs


def _text_part(text: str, subtype: str, into: Message | None = None) -> Message:
    part = Message() if into is None else into
    part["Content-Type"] = f"text/{subtype}"
    # set_payload with a charset adds MIME-Version (top level only), the charset
    # parameter and the Content-Transfer-Encoding, and encodes the body.
    part.set_payload(text, _charset_for(text))
    if into is None:
        del part["MIME-Version"]
    return part


def _render_compat32(headers: list[tuple[str, str]], body: str | None, html: str | None) -> bytes:
    msg = Message()
    for name, value in headers:
        msg[name] = value
    msg["MIME-Version"] = "1.0"
    if body is not None and html is not None:
        # A boundary of our own: the generator's default searches the whole body with a
        # freshly compiled regex per message. "=_" cannot occur in QP or base64 output
        # (RFC 2045 5.1), and a random 128-bit value will not occur in a 7bit body.
        msg["Content-Type"] = f'multipart/alternative; boundary="=_{uuid.uuid4().hex}"'
        msg.set_payload([_text_part(body, "plain"), _text_part(html, "html")])
    elif html is not None:
        _text_part(html, "html", into=msg)
    else:
        _text_part(body or "", "plain", into=msg)
    return msg.as_bytes(policy=_COMPAT32)


# The fast path: the same bytes the compat32 path writes (headers byte for byte; bodies
# decoding to the same text), built directly instead of through Message and Generator,
# which cost about two thirds of rendering a small message. Used only for bodies it
# provably handles like the compat32 path (see _fast_body_ok); the rest go through
# _render_compat32.

# Characters the fast path leaves to the compat32 path: CR (the generator turns a lone
# CR into a line break), and the other ASCII controls that str.splitlines treats as
# line ends (_charset_for's line-length check uses it; in a non-ASCII text they do not
# matter, as QP and base64 encode them).
_SLOW_BODY_CHARS = re.compile("[\r\x0b\x0c\x1c-\x1e]")
# 76 base64 characters per line, as email.base64mime writes them.
_B64_CHUNK = 57
_CTE = "Content-Transfer-Encoding: "


def _fast_body_ok(text: str | None) -> bool:
    return text is None or _SLOW_BODY_CHARS.search(text) is None


def _fast_header(name: str, value: str) -> str:
    """The header line compat32 writes (Compat32._fold), with its CRLF."""
    if value.isascii() and len(name) + 2 + len(value) <= _FOLD_WIDTH:
        # Header.encode leaves an ASCII value that fits on the first line as it is.
        return f"{name}: {value}\r\n"
    folded = Header(value, header_name=name).encode(linesep="\r\n", maxlinelen=_FOLD_WIDTH)
    return f"{name}: {folded}\r\n"


def _fast_part(text: str, subtype: str) -> tuple[str, bytes, bool]:
    """(Content-Type and Content-Transfer-Encoding lines, encoded body, is 7bit)."""
    data = text.encode()
    if len(data) == len(text) and _OVERLONG_LINE.search(text) is None:
        head = f'Content-Type: text/{subtype}; charset="us-ascii"\r\n{_CTE}7bit\r\n'
        return head, data.replace(b"\n", b"\r\n"), True
    high = len(data.translate(None, _ASCII_BYTES))
    if len(data) + 2 * high <= len(data) * 4 / 3:
        # b2a_qp keeps the text's LF line ends (it has no CR here) and soft-breaks at
        # 76 columns with "=\n"; both become CRLF.
        body = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
        cte = "quoted-printable"
    else:
        body = b"".join(
            binascii.b2a_base64(data[i : i + _B64_CHUNK], newline=False) + b"\r\n"
            for i in range(0, len(data), _B64_CHUNK)
        )
        cte = "base64"
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n{_CTE}{cte}\r\n'
    return head, body, False


def _render_fast(headers: list[tuple[str, str]], body: str | None, html: str | None) -> bytes:
    head = "".join(_fast_header(name, value) for name, value in headers) + "MIME-Version: 1.0\r\n"
    if body is not None and html is not None:
        text_head, text_data, text_7bit = _fast_part(body, "plain")
        html_head, html_data, html_7bit = _fast_part(html, "html")
        # "=_" cannot occur in QP or base64 output (RFC 2045 5.1); a 7bit part could
        # hold anything, so it is checked (a random 128-bit value is never found there).
        while True:
            boundary = f"=_{uuid.uuid4().hex}".encode()
            if not (text_7bit and boundary in text_data) and not (
                html_7bit and boundary in html_data
            ):
                break
        delimiter = b"--" + boundary + b"\r\n"
        return b"".join(
            (
                head.encode(),
                b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n',
                delimiter,
                text_head.encode(),
                b"\r\n",
                text_data,
                b"\r\n",
                delimiter,
                html_head.encode(),
                b"\r\n",
                html_data,
                b"\r\n--" + boundary + b"--\r\n",
            )
        )
    part_head, data, _ = _fast_part(
        html if html is not None else body or "", "html" if html is not None else "plain"
    )
    return (head + part_head + "\r\n").encode() + data


def _render_policy(
    headers: list[tuple[str, Any]], body: str | None, html: str | None, *, utf8: bool
) -> bytes:
    msg = EmailMessage(policy=_POLICY_UTF8 if utf8 else _POLICY)
    for name, value in headers:
        msg[name] = value
    if body is not None:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html or "", subtype="html")
    return msg.as_bytes()


def _date_now() -> str:
    return _date_header(int(time.time()))


@functools.lru_cache(maxsize=2)
def _date_header(epoch_seconds: int) -> str:
    # A Date header has whole seconds, and formatting one costs more than the rest of
    # a small message's headers: format once per second.
    return format_datetime(datetime.fromtimestamp(epoch_seconds, UTC))


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
    sender = _parse_all([request.from_ or default_from], "from")[0]
    to = _parse_all(request.to, "to")
    cc = _parse_all(request.cc, "cc")
    bcc = _parse_all(request.bcc, "bcc")
    reply_to = _parse_all([request.reply_to], "reply_to") if request.reply_to else []
    if not to and not cc and not bcc:
        raise ValueError("no recipients")
    _check_header_text("subject", request.subject)
    extra = _extra_headers(request.headers)

    rcpt_tos: list[str] = []
    seen: set[str] = set()
    for address in (*to, *cc, *bcc):
        if address.addr_spec not in seen:
            seen.add(address.addr_spec)
            rcpt_tos.append(address.addr_spec)
    smtputf8 = any(a.smtputf8 for a in (sender, *to, *cc, *bcc, *reply_to))

    message_id = f"<{record_id or new_id()}@{sender.domain}>"
    date = format_datetime(now) if now is not None else _date_now()

    # Only text that may be split matters for folding: an addr-spec or a Message-ID is
    # one unbreakable token on either path. "Reply-To" stands for every address header
    # (the longest name).
    foldable = [("Subject", request.subject), *extra]
    foldable += [("Reply-To", a.display_name) for a in (sender, *to, *cc, *reply_to)]
    if smtputf8 or not all(_compat32_folds(name, value) for name, value in foldable):
        # The modern policy: it writes non-ASCII local parts as raw UTF-8 (RFC 6532;
        # they cannot be RFC 2047-encoded) and splits over-long words.
        def addresses(items: list[_Address]) -> list[Address]:
            return [Address(a.display_name, a.local, a.domain) for a in items]

        modern: list[tuple[str, Any]] = [
            ("Date", date),
            ("From", addresses([sender])),
            ("To", addresses(to)),
            ("Cc", addresses(cc)),
            ("Reply-To", addresses(reply_to)),
            ("Subject", request.subject),
            ("Message-ID", message_id),
        ]
        modern = [(n, v) for n, v in modern if v or n == "Subject"] + list(extra)
        data = _render_policy(modern, request.body, request.html, utf8=smtputf8)
    else:
        plain = [
            ("Date", date),
            ("From", _format(sender)),
            ("To", ", ".join(map(_format, to))),
            ("Cc", ", ".join(map(_format, cc))),
            ("Reply-To", ", ".join(map(_format, reply_to))),
            ("Subject", request.subject),
            ("Message-ID", message_id),
        ]
        plain = [(n, v) for n, v in plain if v or n == "Subject"] + extra
        if _fast_body_ok(request.body) and _fast_body_ok(request.html):
            data = _render_fast(plain, request.body, request.html)
        else:
            data = _render_compat32(plain, request.body, request.html)
    return RenderedMessage(
        message_id=message_id,
        mail_from=sender.addr_spec,
        rcpt_tos=rcpt_tos,
        data=data,
        smtputf8=smtputf8,
    )


# ------------------------------------------------------------------------ backoff


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry n (n >= 1): jittered, at most min(cap, base * 2**(n-1)).

    "Equal jitter": uniform in [limit/2, limit], so retries of many messages spread
    out without any of them coming back almost at once.
    """
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    # Cap the exponent: 2.0**1100 overflows a float, and no schedule needs more.
    limit = min(cap, base * 2.0 ** min(retry_number - 1, 1000))
    limit = max(limit, 0.0)
    return limit / 2 + rng.uniform(0.0, limit / 2)


# ------------------------------------------------------------------ classification


class SMTPProtocolError(smtplib.SMTPException):
    """The server broke the protocol: an over-long reply line or an endless reply."""


def _text(reply: bytes | str) -> str:
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
        refused = [(r, c, _text(m)) for r, (c, m) in exc.recipients.items()]
        if not refused:
            return TemporaryDeliveryError("all recipients refused", recipient=recipient)
        temporary = [item for item in refused if not 500 <= item[1] <= 599]
        rcpt, code, text = (temporary or refused)[0]
        error = _by_code(code, text, rcpt if len(refused) == 1 else recipient)
        if len(refused) > 1:
            error.reply = "all recipients refused: " + "; ".join(
                f"{r}: {c} {t}" for r, c, t in refused
            )
        return error
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, _text(exc.smtp_error), recipient)
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


# ------------------------------------------------------------------- connections

# Replies: smtplib's own bound on one line (8192) and ours on a whole reply, so a
# server sending an endless line or endless "250-" lines cannot grow memory.
_MAXLINE = 8192  # smtplib._MAXLINE (private there)
_MAX_REPLY_LINES = 200
# Sending: besides SMTP_TIMEOUT, one more second per this many bytes, so a large
# message on a slow link may take longer than a command, yet a server that reads one
# byte a second cannot hold a thread for ever.
_MIN_SEND_RATE = 256 * 1024


class _BoundedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose every reply must arrive in full within `timeout` seconds.

    smtplib's timeout is per recv(), so a server dripping one byte a second never
    trips it; here each reply and each send has an overall deadline.
    """

    def __init__(self, host: str, port: int, *, timeout: float, **kwargs: Any) -> None:
        self._rbuf = bytearray()
        super().__init__(host, port, timeout=timeout, **kwargs)

    def _readline(self, deadline: float) -> bytes:
        buf = self._rbuf
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                return line
            if len(buf) > _MAXLINE:
                self.close()
                raise SMTPProtocolError(f"reply line longer than {_MAXLINE} bytes")
            remaining = deadline - time.monotonic()
            sock = self.sock
            if sock is None:
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if remaining <= 0:
                self.close()
                raise TimeoutError(f"no complete SMTP reply within {self.timeout:g}s")
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(8192)
            except TimeoutError:
                self.close()
                raise TimeoutError(f"no complete SMTP reply within {self.timeout:g}s") from None
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"Connection unexpectedly closed: {exc}"
                ) from exc
            if not chunk:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            buf += chunk

    def getreply(self) -> tuple[int, bytes]:
        # The same parsing as smtplib.SMTP.getreply, reading under one deadline.
        deadline = time.monotonic() + self.timeout
        lines: list[bytes] = []
        while True:
            line = self._readline(deadline)
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
            if len(lines) >= _MAX_REPLY_LINES:
                self.close()
                raise SMTPProtocolError(f"reply longer than {_MAX_REPLY_LINES} lines")
        return code, b"\n".join(lines)

    def send(self, s: Any) -> None:
        if isinstance(s, str):
            s = s.encode(self.command_encoding)
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        view = memoryview(s)
        budget = self.timeout + len(view) / _MIN_SEND_RATE
        deadline = time.monotonic() + budget
        try:
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"could not send {len(s)} bytes within {budget:g}s")
                sock.settimeout(remaining)
                sent = sock.send(view)
                view = view[sent:]
        except TimeoutError as exc:
            self.close()
            raise TimeoutError(f"could not send {len(s)} bytes within {budget:g}s") from exc
        except OSError as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Server not connected: {exc}") from exc

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        reply = super().starttls(*args, **kwargs)
        # Anything read past the "220" was sent in plain text before the handshake:
        # a STARTTLS command injection. Drop it (as smtplib does with its file buffer).
        self._rbuf.clear()
        return reply

    def close(self) -> None:
        self._rbuf.clear()
        super().close()


class _BoundedSMTPSSL(_BoundedSMTP, smtplib.SMTP_SSL):
    """Implicit TLS. The handshake is bounded by the socket timeout: CPython's
    do_handshake() applies it as an overall deadline, not per read."""


@functools.cache
def _local_hostname() -> str:
    # smtplib would call getfqdn() (a DNS lookup) on every connect; once is enough.
    return socket.getfqdn()


def make_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Certificates and host name verified (unless SMTP_VERIFY_TLS=false), TLS 1.2
    minimum, SMTP_CA_FILE trusted in addition to the system store."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.smtp_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.smtp_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise PermanentDeliveryError(
                f"cannot load SMTP_CA_FILE {settings.smtp_ca_file}: {exc}"
            ) from exc
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _StaleConnection(Exception):
    """A reused connection died while idle; the message was not started on it."""


class SMTPConnection:
    """One SMTP session that is reused across messages (RSET between transactions).

    Not thread-safe: one per delivery thread. Reconnects when the connection is
    closed, broken, idle for longer than settings.smtp_idle_timeout, answered
    421, or has carried settings.smtp_max_messages_per_connection messages.

    A successful transaction leaves the server ready for the next MAIL (RFC 5321
    4.1.1.4), so RSET is sent only after a failed one, saving a round trip per message.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._settings = settings
        self._clock = clock
        self._ssl_context = ssl_context
        self._smtp: _BoundedSMTP | None = None
        self._messages = 0  # transactions on the current session
        self._last_used = 0.0
        self.connections_opened = 0  # for tests and metrics

    @property
    def is_open(self) -> bool:
        """A session is open and was left in a clean state."""
        return self._smtp is not None

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(self._settings)
        return self._ssl_context

    def _open(self) -> _BoundedSMTP:
        s = self._settings
        context = self._context() if s.smtp_security != "none" else None
        smtp: _BoundedSMTP | None = None
        try:
            if s.smtp_security == "ssl":
                smtp = _BoundedSMTPSSL(
                    s.smtp_host,
                    s.smtp_port,
                    timeout=s.smtp_timeout,
                    local_hostname=_local_hostname(),
                    context=context,
                )
            else:
                smtp = _BoundedSMTP(
                    s.smtp_host,
                    s.smtp_port,
                    timeout=s.smtp_timeout,
                    local_hostname=_local_hostname(),
                )
            smtp.ehlo_or_helo_if_needed()
            if s.smtp_security == "starttls":
                if not smtp.has_extn("starttls"):
                    # Never a silent downgrade to plain text.
                    raise PermanentDeliveryError(
                        f"SMTP_SECURITY=starttls but {s.smtp_host}:{s.smtp_port} does not "
                        "offer STARTTLS; refusing to send in plain text"
                    )
                smtp.starttls(context=context)
                smtp.ehlo_or_helo_if_needed()
            if s.smtp_username is not None and s.smtp_password is not None:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
        except BaseException as exc:
            if smtp is not None:
                smtp.close()
            if isinstance(exc, DeliveryError):
                raise
            if isinstance(exc, Exception):
                raise classify(exc) from exc
            raise
        self.connections_opened += 1
        log.debug(
            "SMTP session opened to %s:%d (security=%s)", s.smtp_host, s.smtp_port, s.smtp_security
        )
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    def _quit(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except Exception:  # noqa: S110  # a polite goodbye; the socket is closed either way
            pass
        finally:
            smtp.close()

    def _session(self) -> tuple[_BoundedSMTP, bool]:
        """The session to use and whether it carried earlier messages."""
        s = self._settings
        if self._smtp is not None and (
            self._clock() - self._last_used > s.smtp_idle_timeout
            or self._messages >= s.smtp_max_messages_per_connection
        ):
            self._quit()
        if self._smtp is None:
            self._smtp = self._open()
            self._messages = 0
            self._last_used = self._clock()
            return self._smtp, False
        return self._smtp, True

    def _after_failure(self, smtp: _BoundedSMTP, code: int) -> None:
        """Leave a clean session after a refused transaction, or none at all."""
        if code == 421 or smtp.sock is None:
            # 421: the server is closing the channel (RFC 5321 3.8).
            self._drop()
            return
        try:
            rset_code, _ = smtp.rset()
        except Exception:
            rset_code = -1
        if rset_code != 250:
            self._drop()

    def _transaction(
        self, smtp: _BoundedSMTP, message: RenderedMessage, reused: bool
    ) -> SendResult:
        options: list[str] = []
        if message.smtputf8:
            if not smtp.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    "the relay does not offer SMTPUTF8, which this message needs for its "
                    "non-ASCII address(es)"
                )
            options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(message.data)}")

        self._messages += 1
        try:
            code, reply = smtp.mail(message.mail_from, options)
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            # Nothing of this message reached the server: if the session is an idle
            # one the server dropped, trying again on a fresh one costs no attempt.
            if reused:
                raise _StaleConnection from exc
            raise
        if code != 250:
            if code == 421 and reused:
                raise _StaleConnection from smtplib.SMTPSenderRefused(
                    code, reply, message.mail_from
                )
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPSenderRefused(code, reply, message.mail_from))

        rejected: list[RejectedRecipient] = []
        for rcpt in message.rcpt_tos:
            code, reply = smtp.rcpt(rcpt)
            if code == 421:
                self._after_failure(smtp, code)
                raise classify(smtplib.SMTPResponseException(code, reply), rcpt)
            if code not in (250, 251):
                rejected.append(RejectedRecipient(rcpt, code, _text(reply)))
        if len(rejected) == len(message.rcpt_tos):
            self._after_failure(smtp, 0)
            raise classify(
                smtplib.SMTPRecipientsRefused(
                    {r.recipient: (r.code, r.message.encode()) for r in rejected}
                )
            )

        try:
            code, reply = smtp.data(message.data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (not 354)
            self._after_failure(smtp, exc.smtp_code)
            raise classify(exc) from exc
        if code != 250:
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPDataError(code, reply))
        return SendResult(rejected=rejected)

    def send(self, message: RenderedMessage) -> SendResult:
        """One attempt. Raises DeliveryError (classified). Partial recipient refusals
        are returned in SendResult.rejected; all refused raises."""
        retried = False
        while True:
            smtp, reused = self._session()
            try:
                result = self._transaction(smtp, message, reused and not retried)
            except _StaleConnection:
                self._drop()
                log.debug("SMTP session went stale while idle; reconnecting")
                retried = True
                continue
            except DeliveryError:
                raise
            except Exception as exc:
                # The session is in an unknown state (timeout, disconnect, garbage).
                self._drop()
                raise classify(exc) from exc
            finally:
                self._last_used = self._clock()
            if self._messages >= self._settings.smtp_max_messages_per_connection:
                self._quit()
            return result

    def offers(self, extension: str) -> bool:
        """Whether the relay advertises `extension` (e.g. "smtputf8") in its EHLO
        answer, opening a session if none is open. Raises DeliveryError when the
        relay cannot be reached."""
        try:
            smtp, _ = self._session()
        except DeliveryError:
            raise
        except Exception as exc:
            self._drop()
            raise classify(exc) from exc
        return bool(smtp.has_extn(extension))

    def close(self) -> None:
        self._quit()


class ConnectionPool:
    """Thread-safe pool of idle SMTPConnection objects for the synchronous path."""

    def __init__(self, settings: Settings, *, max_idle: int = 8):
        self._settings = settings
        self._max_idle = max_idle
        self._idle: list[SMTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ssl_context: ssl.SSLContext | None = None

    def _borrow(self) -> SMTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: least likely stale
            if self._settings.smtp_security != "none" and self._ssl_context is None:
                # Loading the trust store costs milliseconds: once per pool.
                self._ssl_context = make_ssl_context(self._settings)
            context = self._ssl_context
        return SMTPConnection(self._settings, ssl_context=context)

    def _give_back(self, connection: SMTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def send(self, message: RenderedMessage) -> SendResult:
        """Borrow a connection, send one attempt, give it back (or drop it on error)."""
        connection = self._borrow()
        try:
            result = connection.send(message)
        except DeliveryError:
            # SMTPConnection closes a session it cannot trust; one left open was
            # RSET after a refusal and is as good as new.
            if connection.is_open:
                self._give_back(connection)
            raise
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return result

    def offers(self, extension: str) -> bool:
        """SMTPConnection.offers on a pooled connection."""
        connection = self._borrow()
        try:
            offered = connection.offers(extension)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return offered

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


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
    rng = rng or random.Random()  # noqa: S311  # jitter, not security
    attempt = 0
    while True:
        attempt += 1
        try:
            result = send(message)
        except Exception as exc:
            error = classify(exc)
            if on_attempt is not None:
                on_attempt(attempt, error)
            if not error.temporary or attempt > max_retries:
                if error is exc:
                    raise
                raise error from exc
            sleep(backoff_delay(attempt, backoff_base, backoff_max, rng))
            continue
        if on_attempt is not None:
            on_attempt(attempt, None)
        return result


__all__: Sequence[str] = [
    "ConnectionPool",
    "DeliveryError",
    "PermanentDeliveryError",
    "RejectedRecipient",
    "RenderedMessage",
    "SMTPConnection",
    "SMTPProtocolError",
    "SendResult",
    "TemporaryDeliveryError",
    "backoff_delay",
    "classify",
    "make_ssl_context",
    "render_message",
    "send_with_retries",
]
