"""Captured messages: raw bytes and envelope kept at once, MIME parsed lazily.

Capture sits on the hot path of every accepted message, so it only stores
what it was given; parsing happens on the first attribute or API access.

Besides our own view (``text``, ``html``, ``attachments``), the parse keeps what
Mailpit's API shows (fakesmtp/mailpit.py): the MIME parts numbered and sorted as
Mailpit's MIME parser, enmime, numbers and sorts them, addresses with their
names, the body as enmime joins it, a snippet and the text that search looks in.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import policy, utils
from email.header import decode_header, make_header
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser, BytesParser
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote_plus

_PARSER = BytesParser(policy=policy.default)
_HEADER_PARSER = BytesHeaderParser(policy=policy.default)


def clean_text(value: str) -> str:
    """Make text that came off the wire JSON-safe: surrogate escapes become U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


@dataclass(frozen=True)
class Address:
    """One mailbox of an address header: the display name (decoded) and the address."""

    name: str
    address: str


@dataclass(frozen=True)
class MessageAddresses:
    """The address headers, parsed. ``bcc`` also holds the envelope recipients that
    no To, Cc or Bcc header names (Mailpit adds those to Bcc when it stores a message)."""

    from_: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()


@dataclass(frozen=True)
class MimePart:
    """One part of the MIME tree, with the id Mailpit gives it (enmime's numbering):
    ``0`` for a message that is not multipart; ``1``, ``2``... for the parts of a
    multipart message; ``2.1``, ``2.2``... inside part 2, which, being a multipart
    itself, is then ``2.0``."""

    part_id: str
    content_type: str
    disposition: str
    filename: str
    content_id: str


@dataclass(frozen=True)
class _MimeView:
    """The parts as enmime sorts them, and the body as it joins it."""

    body_text: str = ""
    body_html: str = ""
    attachment_parts: tuple[MimePart, ...] = ()
    inline_parts: tuple[MimePart, ...] = ()
    other_parts: tuple[MimePart, ...] = ()


@dataclass(frozen=True)
class _Parsed:
    subject: str | None
    message_id: str | None
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[str]
    addresses: MessageAddresses = MessageAddresses()
    date: datetime | None = None
    mime: _MimeView = _MimeView()
    snippet: str = ""
    search_text: str = ""


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


# HTML to text, as Mailpit's html2text.Strip does it for snippets and search ----------

# Mailpit leaves out what these hold; a space follows these block elements' ends.
_HTML_SKIPPED = frozenset({"script", "title", "head", "style", "noscript"})
_HTML_BLOCKS = frozenset(
    {
        "div", "p", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li",
        "address", "article", "aside", "blockquote", "dl", "dt", "footer", "header", "hr",
        "main", "nav", "pre", "table", "thead", "tfoot", "video",
    }
)  # fmt: skip
# Go's \s, which Mailpit's expressions use: ASCII white space only.
_GO_SPACES = re.compile(r"[\t\n\f\r ]+")


class _HTMLText(HTMLParser):
    def __init__(self, *, links: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.links = links
        self.pieces: list[str] = []
        self.skipping = 0
        self.anchors: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIPPED:
            self.skipping += 1
        elif tag == "body":
            self.skipping = 0  # an unclosed <head> ends where the body starts
        elif tag in ("br", "img"):
            self.pieces.append(" ")
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self.anchors.append(href if href.lower().startswith("http") else None)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _HTML_BLOCKS:
            self.pieces.append(" ")
        elif tag == "a" and self.anchors:
            href = self.anchors.pop()
            if self.links and href:
                self.pieces.append(f" {href} ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.pieces.append(data)


def html_to_text(html: str, *, links: bool = False) -> str:
    """The text of an HTML body on one line, as Mailpit makes snippets and search text
    (``links``: each http(s) link's address follows its text)."""
    parser = _HTMLText(links=links)
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: S110 - whatever was read before the failure is the text
        pass
    text = "".join(parser.pieces).replace("\ufeff", " ")
    text = "".join(c if c.isprintable() else " " for c in text)
    return _GO_SPACES.sub(" ", text).strip()


# Search text, snippet ------------------------------------------------------------------

_SEARCH_SEPARATORS = re.compile(r"\r?\n|\t|>|<|\"|,|;|\(|\)")


def search_form(text: str) -> str:
    """Text as Mailpit's search compares it (its cleanString): lower case, without
    line breaks, tabs and ``<>",;()``, white space runs made single spaces."""
    text = _SEARCH_SEPARATORS.sub(" ", text.replace("\ufeff", " "))
    return " ".join(text.split()).lower()


_SNIPPET_BYTES = 200


def _truncated(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, never half a character; ``...`` if cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + "..."


def _snippet(body_text: str, body_html: str) -> str:
    """Mailpit's snippet: the HTML's text if there is HTML, else the text, on one line."""
    body_text, body_html = body_text.strip(), body_html.strip()
    if body_html:
        return _truncated(html_to_text(body_html), _SNIPPET_BYTES)
    text = _GO_SPACES.sub(" ", body_text.replace("\ufeff", " ")).strip()
    return _truncated(text, _SNIPPET_BYTES)


# The MIME tree, numbered and sorted as enmime does it -----------------------------------


@dataclass
class _Node:
    part: MIMEPart
    info: MimePart
    container: bool
    children: list[_Node] = field(default_factory=list)


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _content_id(value: Any) -> str:
    """As enmime reads Content-ID: without its ``<>``, and URL-unescaped if it can be."""
    if value is None:
        return ""
    text = clean_text(str(value)).strip().lstrip("<").rstrip(">")
    return text if _BAD_PERCENT.search(text) else unquote_plus(text)


def _node(part: MIMEPart, part_id: str) -> _Node:
    content_type = part.get_content_type()
    info = MimePart(
        part_id=part_id,
        content_type=content_type,
        disposition=part.get_content_disposition() or "",
        filename=clean_text(part.get_filename() or ""),
        content_id=_content_id(part.get("content-id")),
    )
    # message/* parts are leaves for enmime; Python parses their payload as messages.
    container = content_type.startswith("multipart/") and part.is_multipart()
    return _Node(part, info, container)


def _mime_tree(msg: EmailMessage) -> _Node:
    """Number the parts as enmime does: a part's children get the part's id plus
    ``.1``, ``.2``..., and then a multipart part's own id gains ``.0``. Iterative, so
    deep nesting cannot exhaust the stack."""
    root = _node(msg, "0")
    pending = [root] if root.container else []
    while pending:
        parent = pending.pop()
        top = parent is root
        for index, child in enumerate(parent.part.iter_parts(), 1):
            child_id = str(index) if top else f"{parent.info.part_id}.{index}"
            node = _node(child, child_id)
            parent.children.append(node)
            if node.container:
                pending.append(node)
        if not top:
            parent.info = replace(parent.info, part_id=parent.info.part_id + ".0")
    return root


def _breadth_first(root: _Node) -> Iterator[_Node]:
    queue = deque([root])
    while queue:
        node = queue.popleft()
        yield node
        queue.extend(node.children)


def _depth_first(root: _Node) -> Iterator[_Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _part_bytes(part: MIMEPart) -> bytes:
    """A part's content as enmime keeps it: transfer-decoded, and for text with a
    declared charset, converted to UTF-8. A message/* part is its body as written."""
    if part.get_content_maintype() == "message" and part.is_multipart():
        flat = part.as_bytes(policy=policy.SMTP)
        _, blank, body = flat.partition(b"\r\n\r\n")
        return body if blank else b""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return b""
    charset = part.get_content_charset()
    if part.get_content_maintype() == "text" and charset:
        try:
            return payload.decode(charset, "replace").encode("utf-8")
        except LookupError:
            pass
    return payload


def _part_text(part: MIMEPart) -> str:
    """A text part's content with the wire's line ends, as enmime's Text and HTML keep it."""
    return _part_bytes(part).decode("utf-8", "replace")


_TEXT_TYPES = ("text/plain", "text/html")


def _is_body(node: _Node, content_type: str) -> bool:
    return node.info.content_type == content_type and node.info.disposition != "attachment"


def _mime_view(msg: EmailMessage) -> _MimeView:
    """enmime's EnvelopeFromPart: attachments, inlines, other parts and the body."""
    root = _mime_tree(msg)
    attachments: list[MimePart] = []
    inlines: list[MimePart] = []
    others: list[MimePart] = []
    text = html = ""
    root_type = root.info.content_type
    if root.container:
        nodes = list(_breadth_first(root))
        for node in nodes:
            ctype, disposition = node.info.content_type, node.info.disposition
            multipart = ctype.startswith("multipart/")
            if disposition == "attachment" or ctype == "application/octet-stream":
                attachments.append(node.info)
            if disposition == "inline" and not multipart:
                inlines.append(node.info)
            unmarked = not (multipart or disposition or ctype == "application/octet-stream")
            if unmarked and ctype not in _TEXT_TYPES:
                others.append(node.info)
        if root_type == "multipart/alternative":
            first = next((n for n in nodes if _is_body(n, "text/plain")), None)
            text = _part_text(first.part) if first else ""
        else:
            texts = [_part_text(n.part) for n in _depth_first(root) if _is_body(n, "text/plain")]
            text = "\n--\n".join(texts)
        first_html = next((n for n in _depth_first(root) if _is_body(n, "text/html")), None)
        html = _part_text(first_html.part) if first_html else ""
    elif root_type in _TEXT_TYPES and root.info.disposition != "attachment":
        if root_type == "text/html":
            html = _part_text(msg)
        else:
            text = _part_text(msg)
    elif root_type.startswith("multipart/"):
        # A multipart message whose boundary is missing: enmime gives up on it; its
        # body is shown as text instead, so that broken mail can still be read.
        text = _part_text(msg)
    elif root.info.disposition == "inline":
        inlines.append(root.info)
    else:
        attachments.append(root.info)
    if not text and html:
        text = html_to_text(html)
    return _MimeView(
        body_text=clean_text(text),
        body_html=clean_text(html),
        attachment_parts=tuple(attachments),
        inline_parts=tuple(inlines),
        other_parts=tuple(others),
    )


# Addresses and dates -------------------------------------------------------------------


def _address_list(msg: EmailMessage, name: str) -> tuple[Address, ...]:
    """The first ``name`` header's mailboxes; none if it is missing or cannot be read.
    Python reads almost anything as an address; Go's parser, which Mailpit uses, wants
    local@domain in each, or it reads none of the list."""
    try:
        header = msg.get(name)
        found = header.addresses if header is not None else ()
    except Exception:
        return ()
    if not all(mailbox.username and mailbox.domain for mailbox in found):
        return ()
    return tuple(Address(clean_text(m.display_name), clean_text(m.addr_spec)) for m in found)


def _decoded_raw_header(msg: EmailMessage, name: str) -> str | None:
    """The first ``name`` header as written, encoded words decoded (Go's GetHeader):
    not re-rendered, as Python's header objects are."""
    value = next((v for k, v in msg.raw_items() if k.lower() == name), None)
    if value is None:
        return None
    value = _unfolded(value)
    try:
        return clean_text(str(make_header(decode_header(value))))
    except Exception:
        return clean_text(value)


def _message_addresses(msg: EmailMessage, rcpt_tos: Sequence[str]) -> MessageAddresses:
    from_list = _address_list(msg, "from")
    raw_from = _decoded_raw_header(msg, "from")
    # As Mailpit: a From it cannot read is shown as a name without an address.
    from_ = from_list[0] if from_list else (Address(raw_from, "") if raw_from else None)
    to, cc, bcc = _address_list(msg, "to"), _address_list(msg, "cc"), _address_list(msg, "bcc")
    named = {a.address.lower() for a in (*to, *cc, *bcc)}
    unnamed = tuple(Address("", r) for r in rcpt_tos if r.lower() not in named)
    return MessageAddresses(from_, to, cc, bcc + unnamed, _address_list(msg, "reply-to"))


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _search_text(
    first: Callable[[str], str | None], mime: _MimeView, rcpt_tos: Sequence[str]
) -> str:
    """Mailpit's createSearchText: address headers, subject, the body's text and the
    attachments' names. Mailpit adds the envelope recipients that no header names to
    Bcc, so every envelope recipient is found."""
    headers = ("from", "subject", "to", "cc", "bcc", "reply-to", "return-path")
    words = [first(h) or "" for h in headers]
    words += rcpt_tos
    body = html_to_text(mime.body_html, links=True) if mime.body_html else ""
    words.append(body or mime.body_text)
    words += [p.filename for p in mime.attachment_parts]
    return search_form(" ".join(words))


_HEADLINE = frozenset({"subject", "message-id"})


def _decoded_headers(
    msg: EmailMessage, items: Iterable[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """``items`` (all of the message's raw headers by default), decoded."""
    headers: list[tuple[str, str]] = []
    for name, value in msg.raw_items() if items is None else items:
        try:
            headers.append((name, _header_value(msg.policy.header_fetch_parse(name, value))))
        except Exception:
            headers.append((name, _header_value(value)))
    return headers


def _first(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _headline(raw: bytes) -> tuple[str | None, str | None]:
    """Subject and Message-ID from the headers alone, as _parse reads them: what a
    summary needs, at a fraction of a whole parse (an event is sent for every message
    while it is captured)."""
    try:
        msg = _HEADER_PARSER.parsebytes(raw)
    except Exception:
        return None, None
    assert isinstance(msg, EmailMessage)
    # Only the two that are shown: decoding every header (addresses most of all) would
    # cost more than the rest of capture.
    wanted = [(name, value) for name, value in msg.raw_items() if name.lower() in _HEADLINE]
    headers = _decoded_headers(msg, wanted)
    message_id = _first(headers, "message-id")
    return _first(headers, "subject"), message_id.strip() if message_id else None


def _parse(raw: bytes, rcpt_tos: Sequence[str] = ()) -> _Parsed:
    """Parse without ever raising: a capture tool must show mail that is broken."""
    try:
        msg = _PARSER.parsebytes(raw)
    except Exception:
        body = raw.decode("utf-8", "replace")
        return _Parsed(
            None, None, [], body, None, [],
            mime=_MimeView(body_text=body),
            snippet=_snippet(body, ""),
            search_text=search_form(body),
        )  # fmt: skip
    headers = _decoded_headers(msg)

    def first(name: str) -> str | None:
        return _first(headers, name)

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
    try:
        mime = _mime_view(msg)
    except Exception:
        mime = _MimeView(body_text=text or "", body_html=html or "")
    addresses = _message_addresses(msg, rcpt_tos)
    return _Parsed(
        subject=first("subject"),
        message_id=message_id.strip() if message_id else None,
        headers=headers,
        text=text,
        html=html,
        attachments=attachments,
        addresses=addresses,
        date=_date(first("date")),
        mime=mime,
        snippet=_snippet(mime.body_text, mime.body_html),
        search_text=_search_text(first, mime, rcpt_tos),
    )


def _unfolded(value: str) -> str:
    """A raw header value on one line, as Go's textproto joins folded lines."""
    return " ".join(line.strip(" \t") for line in value.splitlines()).strip(" \t")


class CapturedMessage:
    """One accepted message: envelope, connection facts and raw bytes; MIME on demand."""

    __slots__ = (
        "_headline",
        "_parsed",
        "auth_user",
        "id",
        "mail_from",
        "raw",
        "rcpt_tos",
        "read",
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
        # Mailpit's read flag: set when its API shows the message or is told to.
        self.read = False
        self._parsed: _Parsed | None = None
        self._headline: tuple[str | None, str | None] | None = None

    def _head(self) -> tuple[str | None, str | None]:
        parsed = self._parsed
        if parsed is not None:
            return parsed.subject, parsed.message_id
        head = self._headline
        if head is None:
            head = self._headline = _headline(self.raw)
        return head

    def _get(self) -> _Parsed:
        # Racing threads may both parse; the result is the same, so no lock.
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = _parse(self.raw, self.rcpt_tos)
        return parsed

    @property
    def subject(self) -> str | None:
        return self._head()[0]

    @property
    def message_id(self) -> str | None:
        return self._head()[1]

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

    @property
    def addresses(self) -> MessageAddresses:
        """From, To, Cc, Bcc (with the envelope's unnamed recipients) and Reply-To."""
        return self._get().addresses

    @property
    def date(self) -> datetime | None:
        """The Date header, if it can be read."""
        return self._get().date

    @property
    def body_text(self) -> str:
        """The text as Mailpit shows it: the text/plain parts (in a multipart/alternative
        the first; else all, joined by ``\\n--\\n``) with the wire's line ends, or the
        HTML's text when there is none."""
        return self._get().mime.body_text

    @property
    def body_html(self) -> str:
        """The first text/html part that is not an attachment ("" if none)."""
        return self._get().mime.body_html

    @property
    def attachment_parts(self) -> tuple[MimePart, ...]:
        """Parts marked attachment, and application/octet-stream ones, breadth first."""
        return self._get().mime.attachment_parts

    @property
    def inline_parts(self) -> tuple[MimePart, ...]:
        """Parts marked inline (bodies too), breadth first."""
        return self._get().mime.inline_parts

    @property
    def other_parts(self) -> tuple[MimePart, ...]:
        """Parts neither marked nor text, nor multipart (an unmarked image), breadth first."""
        return self._get().mime.other_parts

    @property
    def snippet(self) -> str:
        """Mailpit's snippet: up to 200 bytes of the body's text, on one line."""
        return self._get().snippet

    @property
    def search_text(self) -> str:
        """What a plain search word is looked for in (see ``search_form``)."""
        return self._get().search_text

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), decoded."""
        lowered = name.lower()
        for key, value in self._get().headers:
            if key.lower() == lowered:
                return value
        return None

    def raw_headers(self) -> list[tuple[str, str]]:
        """The headers as they came, undecoded, each on one line (parsed on every call:
        rarely asked for, so not kept)."""
        try:
            msg = _PARSER.parsebytes(self.raw, headersonly=True)
            return [(clean_text(k), clean_text(_unfolded(v))) for k, v in msg.raw_items()]
        except Exception:
            return []

    def part_contents(self, part_ids: Collection[str] | None = None) -> dict[str, bytes]:
        """The parts' contents by part id (see ``MimePart``), as enmime decodes them:
        these parts' or all. Parsed again on every call, so that attachments are not
        held twice in memory."""
        contents: dict[str, bytes] = {}
        try:
            for node in _breadth_first(_mime_tree(_PARSER.parsebytes(self.raw))):
                if part_ids is not None and node.info.part_id not in part_ids:
                    continue
                try:
                    contents[node.info.part_id] = _part_bytes(node.part)
                except Exception:
                    contents[node.info.part_id] = b""
        except Exception:  # noqa: S110 - parts found before the failure are still served
            pass
        return contents

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
