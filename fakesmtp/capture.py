"""Captured messages: raw bytes and envelope kept at once, MIME parsed lazily.

Capture sits on the hot path of every accepted message, so it only stores
what it was given; parsing happens on the first attribute or API access.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

_PARSER = BytesParser(policy=policy.default)


def clean_text(value: str) -> str:
    """Make text that came off the wire JSON-safe: surrogate escapes become U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


@dataclass(frozen=True)
class _Parsed:
    subject: str | None
    message_id: str | None
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[str]


def _decoded_payload(part: EmailMessage) -> str:
    """The part's text with line ends as Python writes them (the wire's CRLF becomes LF)."""
    return _decode(part).replace("\r\n", "\n")


def _decode(part: EmailMessage) -> str:
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except Exception:  # noqa: S110 - any decoding failure falls back to the bytes below
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _header_value(value: Any) -> str:
    return clean_text(str(value))


def _parse(raw: bytes) -> _Parsed:
    """Parse without ever raising: a capture tool must show mail that is broken."""
    try:
        msg = _PARSER.parsebytes(raw)
    except Exception:
        return _Parsed(None, None, [], raw.decode("utf-8", "replace"), None, [])
    headers: list[tuple[str, str]] = []
    for name, value in msg.raw_items():
        try:
            headers.append((name, _header_value(msg.policy.header_fetch_parse(name, value))))
        except Exception:
            headers.append((name, _header_value(value)))

    def first(name: str) -> str | None:
        for key, value in headers:
            if key.lower() == name:
                return value
        return None

    message_id = first("message-id")
    text: str | None = None
    html: str | None = None
    attachments: list[str] = []
    try:
        for part in msg.walk():
            if part.is_multipart():
                continue
            filename = part.get_filename()
            disposition = part.get_content_disposition()
            if filename or disposition == "attachment":
                attachments.append(clean_text(filename or "(unnamed)"))
                continue
            ctype = part.get_content_type()
            if ctype == "text/plain" and text is None:
                text = clean_text(_decoded_payload(part))
            elif ctype == "text/html" and html is None:
                html = clean_text(_decoded_payload(part))
    except Exception:
        # Unparseable MIME: keep what was found, and the raw bytes speak for the rest.
        if text is None and html is None:
            text = raw.decode("utf-8", "replace")
    return _Parsed(
        subject=first("subject"),
        message_id=message_id.strip() if message_id else None,
        headers=headers,
        text=text,
        html=html,
        attachments=attachments,
    )


class CapturedMessage:
    """One accepted message: envelope, connection facts and raw bytes; MIME on demand."""

    __slots__ = (
        "_parsed",
        "auth_user",
        "id",
        "mail_from",
        "raw",
        "rcpt_tos",
        "received_at",
        "size",
        "tls",
    )

    def __init__(
        self,
        id: str,
        mail_from: str,
        rcpt_tos: list[str],
        raw: bytes,
        *,
        tls: bool,
        auth_user: str | None,
        received_at: datetime | None = None,
    ) -> None:
        self.id = id
        self.mail_from = clean_text(mail_from)
        self.rcpt_tos = [clean_text(r) for r in rcpt_tos]
        self.raw = raw
        self.size = len(raw)
        self.tls = tls
        self.auth_user = auth_user
        self.received_at = received_at or datetime.now(UTC)
        self._parsed: _Parsed | None = None

    def _get(self) -> _Parsed:
        # Racing threads may both parse; the result is the same, so no lock.
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = _parse(self.raw)
        return parsed

    @property
    def subject(self) -> str | None:
        return self._get().subject

    @property
    def message_id(self) -> str | None:
        return self._get().message_id

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self._get().headers)

    @property
    def text(self) -> str | None:
        return self._get().text

    @property
    def html(self) -> str | None:
        return self._get().html

    @property
    def attachments(self) -> list[str]:
        return list(self._get().attachments)

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), decoded."""
        lowered = name.lower()
        for key, value in self._get().headers:
            if key.lower() == lowered:
                return value
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "subject": self.subject,
            "message_id": self.message_id,
            "received_at": self.received_at.isoformat(),
            "size": self.size,
            "tls": self.tls,
            "auth_user": self.auth_user,
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "headers": [[k, v] for k, v in self.headers],
            "text": self.text,
            "html": self.html,
            "attachments": self.attachments,
            "raw": self.raw.decode("utf-8", "replace"),
        }

    def __repr__(self) -> str:
        return f"<CapturedMessage id={self.id} from={self.mail_from!r} to={self.rcpt_tos!r}>"


StoreListener = Callable[[str, "CapturedMessage | None"], None]


class MessageStore:
    """A bounded, thread-safe store: the loop thread appends, any thread reads or waits.

    Listeners (``subscribe``) hear of every change at once, on the thread that made
    it: ``("message", m)`` when ``m`` is stored, ``("delete", m)`` when ``m`` is
    deleted, ``("clear", None)`` when all are. They must be quick and thread-safe
    (the event stream hands each one to its own loop)."""

    def __init__(self, max_messages: int) -> None:
        self._messages: deque[CapturedMessage] = deque(maxlen=max_messages)
        self._cond = threading.Condition()
        self._next_id = 1
        self._listeners: list[StoreListener] = []
        self.stored_total = 0

    def subscribe(self, listener: StoreListener) -> Callable[[], None]:
        """Call ``listener(kind, message)`` on every change; returns the unsubscribe."""
        with self._cond:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._cond:
                self._listeners = [x for x in self._listeners if x is not listener]

        return unsubscribe

    def _tell(self, kind: str, message: CapturedMessage | None) -> None:
        for listener in self._listeners:  # a copy-on-write list: no lock needed
            listener(kind, message)

    def add(self, make: Callable[[str], CapturedMessage]) -> CapturedMessage:
        with self._cond:
            message = make(str(self._next_id))
            self._next_id += 1
            self._messages.append(message)
            self.stored_total += 1
            self._cond.notify_all()
        self._tell("message", message)
        return message

    def next_id(self) -> str:
        """Reserve an id for a message that is accepted but not stored (blackhole)."""
        with self._cond:
            value = str(self._next_id)
            self._next_id += 1
            return value

    def snapshot(self) -> list[CapturedMessage]:
        """Newest first."""
        with self._cond:
            items = list(self._messages)
        items.reverse()
        return items

    def get(self, message_id: str) -> CapturedMessage | None:
        with self._cond:
            return next((m for m in self._messages if m.id == message_id), None)

    def delete(self, message_ids: Iterable[str]) -> list[CapturedMessage]:
        """Remove the messages with these ids; returns the ones that were there."""
        wanted = set(message_ids)
        with self._cond:
            gone = [m for m in self._messages if m.id in wanted]
            if gone:
                kept = [m for m in self._messages if m.id not in wanted]
                self._messages.clear()
                self._messages.extend(kept)
        for message in gone:
            self._tell("delete", message)
        return gone

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
        self._tell("clear", None)

    def __len__(self) -> int:
        return len(self._messages)

    def wait_for(self, count: int, timeout: float) -> list[CapturedMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected at least {count} message(s) within {timeout}s, "
                    f"got {len(self._messages)}"
                )
        return self.snapshot()
