"""Read a bounce: which recipients failed or were delayed, with what status and why.

`parse_bounce` takes the raw bytes of a mail that came back to a VERP address and
never raises. An RFC 3464 report (`multipart/report` with a `message/delivery-status`
part, or RFC 6533's `message/global-delivery-status`) is read here, one header block
per recipient; anything else goes to flufl.bounce (`heuristics`), whose detectors
know the older formats but give addresses only. What neither recognises is
"unrecognised", with no recipients: the caller logs it and moves on.

The work is bounded whatever arrives: at most MAX_BYTES of the mail are read, and of
those no more than MAX_SEPARATORS blank lines and boundary lines (each is a header
block or a MIME part for the email package to build) and MAX_MULTIPARTS multiparts;
the rest counts as cut off in transit, which costs nothing here, as every report puts
what it says before the copy of the returned message. At most MAX_RECIPIENTS
recipients are kept.
"""

from __future__ import annotations

import email
import itertools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Literal, TypeVar

from service.bounces import heuristics
from service.bounces.fields import POLICY, address, header, one_line, strip_type

__all__ = [
    "MAX_BYTES",
    "MAX_DIAGNOSTIC",
    "MAX_MULTIPARTS",
    "MAX_RECIPIENTS",
    "MAX_SEPARATORS",
    "Bounce",
    "BounceFormat",
    "BouncedRecipient",
    "parse_bounce",
]

logger = logging.getLogger(__name__)

MAX_BYTES = 1024 * 1024
MAX_SEPARATORS = 1000
# The email package's parser slows down with the square of the nesting depth of
# multiparts (500 levels: 0.1 s); no bounce nests more than a handful.
MAX_MULTIPARTS = 32
MAX_RECIPIENTS = 100
MAX_DIAGNOSTIC = 512

BounceFormat = Literal["rfc3464", "other", "unrecognised"]

# message/global-delivery-status is RFC 6533's, for SMTPUTF8 mail: the same fields,
# UTF-8 allowed.
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
# What carries the returned message's Message-ID: a copy of it, or its headers.
_RETURNED_TYPES = ("message/rfc822", "message/global", "message/global-headers")
_COUNTED_ACTIONS = ("failed", "delayed")
# Header blocks of a delivery-status part read at most: the recipients kept, and as
# many again for the ones not kept (delivered, named twice, unreadable).
_MAX_BLOCKS = 1 + 2 * MAX_RECIPIENTS
# A report nested deeper than this in multiparts is not looked for.
_MAX_DEPTH = 8

_SEPARATOR = re.compile(rb"\n(?:--|[ \t]*\r?\n)")
# Counted wherever it appears (a folded Content-Type may put it on a line of its own);
# a mention in a text costs no more than a cut that comes a little early.
_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\r?\n[ \t]*\r?\n")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_ACTION = re.compile(r"[a-z]+")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,995}>")

_A = TypeVar("_A")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    """One recipient a bounce reports: `status` is the RFC 3463 code ("5.1.1") when the
    report gives one, `action` is "failed" or "delayed"."""

    recipient: str
    status: str | None
    action: str
    diagnostic: str | None

    @property
    def permanent(self) -> bool:
        """A hard bounce: status class 5, or "failed" when there is no status to ask."""
        if self.status is not None:
            return self.status.startswith("5")
        return self.action == "failed"


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a bounce says. `original_message_id` is the returned message's Message-ID
    with its angle brackets, when the bounce carries the message or its headers."""

    recipients: tuple[BouncedRecipient, ...]
    original_message_id: str | None
    format: BounceFormat


UNRECOGNISED = Bounce(recipients=(), original_message_id=None, format="unrecognised")


def parse_bounce(raw: bytes) -> Bounce:
    """What the bounce `raw` says; "unrecognised" with no recipients when it says
    nothing this module can read. Never raises."""
    msg = _guarded("reading the message", _message, raw)
    if msg is None:
        return UNRECOGNISED
    report = _guarded("reading the RFC 3464 report", _from_report, msg)
    if report is not None:
        return report
    other = _guarded("flufl.bounce", _from_heuristics, msg)
    return other if other is not None else UNRECOGNISED


def _guarded(stage: str, step: Callable[[_A], _R | None], arg: _A) -> _R | None:
    """`step(arg)`, or None when it raises."""
    try:
        return step(arg)
    except Exception as exc:
        # A bounce is whatever a stranger sent, and the email package and flufl.bounce's
        # detectors raise on some of it (RecursionError on deep nesting, IndexError on a
        # message without From, ...). A bounce that cannot be read is not a crash.
        logger.warning("bounce: %s failed on this mail (%s)", stage, type(exc).__name__)
        return None


def _message(raw: bytes) -> Message[str, str]:
    return email.message_from_bytes(_cut(raw), policy=POLICY)


def _cut(raw: bytes) -> bytes:
    """`raw` up to MAX_BYTES, and up to its MAX_SEPARATORS-th separator and its
    MAX_MULTIPARTS-th multipart."""
    raw = raw[:MAX_BYTES]
    end = len(raw)
    for pattern, limit in ((_SEPARATOR, MAX_SEPARATORS), (_MULTIPART, MAX_MULTIPARTS)):
        beyond = next(itertools.islice(pattern.finditer(raw, 0, end), limit, None), None)
        if beyond is not None:
            end = beyond.start()
    return raw[:end]


def _from_report(msg: Message[str, str]) -> Bounce | None:
    """The RFC 3464 report in `msg`; None when there is none, or when its
    delivery-status part names no recipient (garbage: flufl.bounce may do better)."""
    found = _find_report(msg)
    if found is None:
        return None
    report, status_part = found
    recipients = _report_recipients(status_part)
    if recipients is None:
        return None
    return Bounce(recipients, _original_message_id(report), "rfc3464")


def _from_heuristics(msg: Message[str, str]) -> Bounce | None:
    """What flufl.bounce's detectors find, as "other"; None when they find nothing."""
    # Read first: heuristics.failures shortens the parts it is given.
    message_id = _original_message_id(msg)
    temporary, permanent = heuristics.failures(msg)
    recipients: list[BouncedRecipient] = []
    seen: set[str] = set()
    # Permanent first: an address reported both ways is a hard bounce.
    for action, addresses in (("failed", permanent), ("delayed", temporary)):
        for plain in addresses:
            if plain.lower() not in seen:
                seen.add(plain.lower())
                recipients.append(BouncedRecipient(plain, None, action, None))
    if not recipients:
        return None
    return Bounce(tuple(recipients[:MAX_RECIPIENTS]), message_id, "other")


def _parts(msg: Message[str, str], depth: int = 0) -> Iterator[Message[str, str]]:
    """`msg` and its multipart descendants, depth first. A message/* part is not entered:
    the returned message is not part of the report, and might be a report itself."""
    yield msg
    if depth < _MAX_DEPTH and msg.get_content_maintype() == "multipart":
        children = msg.get_payload()
        if isinstance(children, list):
            for child in children:
                if isinstance(child, Message):
                    yield from _parts(child, depth + 1)


def _find_report(msg: Message[str, str]) -> tuple[Message[str, str], Message[str, str]] | None:
    """The first multipart/report with a delivery-status part, and that part.

    The report-type parameter is not required: RFC 6522 wants it, but the
    delivery-status part is what says what the report is."""
    for part in _parts(msg):
        if part.get_content_type() != "multipart/report":
            continue
        children = part.get_payload()
        if not isinstance(children, list):
            continue
        for child in children:
            if isinstance(child, Message) and child.get_content_type() in _STATUS_TYPES:
                return part, child
    return None


def _report_recipients(status_part: Message[str, str]) -> tuple[BouncedRecipient, ...] | None:
    """The failed and delayed recipients of a delivery-status part; None when no block of
    it names a recipient.

    The part is a list of header blocks: the per-message block (Reporting-MTA, ...),
    then one per recipient. A block is taken for a recipient's by its Final-Recipient,
    not by its place, as some MTAs leave the first one out."""
    named_any = False
    recipients: list[BouncedRecipient] = []
    seen: set[str] = set()
    for block in itertools.islice(_status_blocks(status_part), _MAX_BLOCKS):
        recipient = _block_recipient(block)
        if recipient is None:
            continue
        named_any = True
        action = _action(block)
        # delivered, relayed and expanded are news of success, not bounces.
        if action not in _COUNTED_ACTIONS or recipient.lower() in seen:
            continue
        seen.add(recipient.lower())
        recipients.append(
            BouncedRecipient(
                recipient=recipient,
                status=_status(block),
                action=action,
                diagnostic=_diagnostic(block),
            )
        )
        if len(recipients) == MAX_RECIPIENTS:
            break
    return tuple(recipients) if named_any else None


def _status_blocks(status_part: Message[str, str]) -> Iterator[Message[str, str]]:
    """The header blocks of a delivery-status part, each as a Message."""
    payload = status_part.get_payload()
    if not isinstance(payload, list):
        return
    if status_part.get_content_type() == "message/delivery-status":
        yield from (block for block in payload if isinstance(block, Message))
        return
    # The email package reads message/global-delivery-status as a message: its headers
    # are the per-message block, its body the recipients' blocks, read here one by one
    # (lazily: only as many as the caller takes).
    if not payload or not isinstance(payload[0], Message):
        return
    first = payload[0]
    yield first
    # As bytes: the str payload would have its UTF-8 replaced (no charset is declared).
    body = first.get_payload(decode=True)
    if not isinstance(body, bytes):
        return
    parser = BytesHeaderParser(policy=POLICY)
    for text in _BLANK_LINE.split(body):
        block = text.lstrip(b"\r\n")
        if block.strip():
            yield parser.parsebytes(block, headersonly=True)


def _block_recipient(block: Message[str, str]) -> str | None:
    # Final-Recipient is the mandatory field; Original-Recipient stands in for it only
    # when it is missing or unreadable.
    for name in ("Final-Recipient", "Original-Recipient"):
        value = header(block, name)
        if value is not None:
            plain = address(strip_type(value))
            if plain is not None:
                return plain
    return None


def _action(block: Message[str, str]) -> str:
    """The Action field's keyword, lower-cased; a comment after it is dropped."""
    match = _ACTION.match((header(block, "Action") or "").lower())
    return match.group() if match else ""


def _status(block: Message[str, str]) -> str | None:
    match = _STATUS.match(header(block, "Status") or "")
    return match.group() if match else None


def _diagnostic(block: Message[str, str]) -> str | None:
    value = header(block, "Diagnostic-Code")
    return None if value is None else one_line(strip_type(value), MAX_DIAGNOSTIC)


def _original_message_id(msg: Message[str, str]) -> str | None:
    """The Message-ID of the returned message, from its copy or its headers."""
    for part in _parts(msg):
        headers: Message[str, str] | None = None
        if part.get_content_type() in _RETURNED_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                headers = payload[0]
        elif part.get_content_type() == "text/rfc822-headers":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                headers = BytesHeaderParser(policy=POLICY).parsebytes(data, headersonly=True)
        if headers is not None:
            match = _MESSAGE_ID.search(header(headers, "Message-ID") or "")
            return match.group() if match else None
    return None
