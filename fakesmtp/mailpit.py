"""Mailpit's API v1 on fakesmtp's HTTP port, so that Mailpit clients work unchanged.

Routes, JSON shapes, status codes and plain-text errors follow Mailpit's own
server/apiv1 and internal/storage (list, search, one message, its headers, raw
source and parts, delete, read status). What Mailpit keeps that fakesmtp does
not (tags, the web UI's settings, relaying, HTML and link checks) is left out;
docs/fakesmtp.md, "Mailpit API v1", has the list.

The GET routes are plain functions, which Starlette runs in its thread pool:
the first look at thousands of messages parses them all, and that must not
hold up the SMTP server, whose event loop also serves this API.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakesmtp.capture import Address, CapturedMessage, MimePart, search_form

if TYPE_CHECKING:
    from fakesmtp.server import FakeSMTPServer


def _server(request: Request) -> FakeSMTPServer:
    server: FakeSMTPServer = request.app.state.server
    return server


# Plain-text answers, as Mailpit writes them -----------------------------------------------


def _text(body: str, status_code: int = 200, content_type: str = "text/plain") -> Response:
    # The header is given whole: Starlette's media_type would add "; charset=utf-8",
    # which Mailpit's plain-text answers do not have.
    return Response(body, status_code=status_code, headers={"content-type": content_type})


def _ok() -> Response:
    return _text("ok")


def _page_not_found() -> Response:
    return _text("404 page not found", 404)


def _bad_request(reason: str) -> Response:
    return _text(reason, 400)


def _no_latest_message() -> Response:
    # Mailpit writes this one without a content type; Go's server then sniffs one.
    return _text("Message not found", 404, "text/plain; charset=utf-8")


# Query parameters ------------------------------------------------------------------------

_GO_INT = re.compile(r"[+-]?\d+")
_GO_INT_MAX = 2**63 - 1


def _query_int(request: Request, name: str) -> int | None:
    """The parameter as Go's strconv.Atoi reads it, or None where Atoi fails."""
    value = request.query_params.get(name, "")
    if not _GO_INT.fullmatch(value) or abs(int(value)) > _GO_INT_MAX:
        return None
    return int(value)


def _start_limit(request: Request) -> tuple[int, int]:
    """Mailpit's getStartLimit: a start that is not a positive integer is 0, a limit
    that is not a non-negative integer is 50. Neither is ever an error."""
    start = _query_int(request, "start")
    limit = _query_int(request, "limit")
    return (start if start and start > 0 else 0, limit if limit is not None and limit >= 0 else 50)


def _timezone(request: Request) -> tzinfo | None:
    """The ``tz`` parameter for after: and before:; None (local time) if absent or unknown."""
    name = request.query_params.get("tz", "")
    try:
        return ZoneInfo(name) if name else None
    except (KeyError, ValueError, OSError):  # unknown (a KeyError), malformed, unreadable
        return None


# JSON shapes -----------------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano, as Mailpit's JSON has it: the fraction without trailing
    zeros (none if zero), ``Z`` for a zero offset."""
    text = moment.replace(tzinfo=None, microsecond=0).isoformat()
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{'-' if offset.total_seconds() < 0 else '+'}{hours:02d}:{minutes:02d}"


def _created(message: CapturedMessage) -> datetime:
    # Mailpit stores the time received in milliseconds.
    received = message.received_at
    return received.replace(microsecond=received.microsecond // 1000 * 1000)


def _address(address: Address | None) -> dict[str, str]:
    # Mailpit shows a message without From as from an empty address, never null.
    if address is None:
        return {"Name": "", "Address": ""}
    return {"Name": address.name, "Address": address.address}


def _address_list(addresses: Iterable[Address]) -> list[dict[str, str]]:
    return [_address(a) for a in addresses]


def _message_id(message: CapturedMessage) -> str:
    return (message.message_id or "").strip("<>")


def _summary(message: CapturedMessage) -> dict[str, Any]:
    """Mailpit's MessageSummary."""
    addresses = message.addresses
    return {
        "ID": message.id,
        "MessageID": _message_id(message),
        "Read": message.read,
        "From": _address(addresses.from_),
        "To": _address_list(addresses.to),
        "Cc": _address_list(addresses.cc),
        "Bcc": _address_list(addresses.bcc),
        "ReplyTo": _address_list(addresses.reply_to),
        "Subject": message.subject or "",
        "Created": _rfc3339(_created(message)),
        "Username": message.auth_user or "",
        "Tags": [],
        "Size": message.size,
        "Attachments": len(message.attachment_parts),
        "Snippet": message.snippet,
    }


def _messages_summary(
    every: Sequence[CapturedMessage],
    matched: Sequence[CapturedMessage],
    start: int,
    page: Sequence[CapturedMessage],
) -> dict[str, Any]:
    """Mailpit's MessagesSummary: mailbox counts, counts of what matched, one page."""
    return {
        "total": len(every),
        "unread": sum(not m.read for m in every),
        "count": len(page),  # "legacy", Mailpit says, and still sends it
        "messages_count": len(matched),
        "messages_unread": sum(not m.read for m in matched),
        "start": start,
        "tags": [],
        "messages": [_summary(m) for m in page],
    }


def _listed(parts: Iterable[MimePart]) -> list[MimePart]:
    # Mailpit lists only the parts that have a file name or a content id.
    return [p for p in parts if p.filename or p.content_id]


def _attachment(part: MimePart, content: bytes) -> dict[str, Any]:
    """Mailpit's Attachment: an inline part or an attachment, without its bytes."""
    return {
        "PartID": part.part_id,
        "FileName": part.filename or part.content_id,
        "ContentType": part.content_type,
        "ContentID": part.content_id,
        "Size": len(content),
        "Checksums": {
            "MD5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            "SHA1": hashlib.sha1(content, usedforsecurity=False).hexdigest(),
            "SHA256": hashlib.sha256(content).hexdigest(),
        },
    }


_ANGLED = re.compile(r"<([^\n]*?)>")
_BETWEEN_ANGLED = re.compile(r">(.*?)<", re.DOTALL)
_COMMENT = re.compile(r"\(.*?\)", re.DOTALL)
_COMMA = re.compile(r"\s*,\s*")
_MAILTO = re.compile(r"mailto:[a-zA-Z0-9]")
_HTTP = re.compile(r"https?://[a-zA-Z0-9]", re.IGNORECASE)


def _unsubscribe_links(value: str) -> tuple[list[str], str]:
    """Mailpit's ListUnsubscribeParser: the links of a List-Unsubscribe header (one
    mailto: and one http(s): at most) and what is wrong with it ("" if nothing)."""
    value = value.strip()
    for comment in _COMMENT.findall(value):
        value = value.replace(comment, "").strip()
    if not _ANGLED.search(value):
        return [], f'"{value}" no valid unsubscribe links found'
    if not (value.startswith("<") and value.endswith(">")):
        return [], f'"{value}" should be enclosed in <>'
    matches = _ANGLED.findall(value)
    if len(matches) > 2:
        return [], f'"{value}" should include a maximum of one email and one HTTP link'
    if any(not _COMMA.fullmatch(between) for between in _BETWEEN_ANGLED.findall(value)):
        return [], f'"{value}" <> should be split with a comma and optional spaces'
    links: list[str] = []
    errors: list[str] = []
    seen: set[str] = set()
    for link in matches:
        kind = "mailto:" if _MAILTO.match(link) else "http" if _HTTP.match(link) else ""
        if re.search(r"\s", link):
            errors.append(f'"{link}" should not contain spaces')
        elif not kind:
            errors.append(f'"{link}" should start with either http(s):// or mailto:')
        elif kind in seen:
            one = "mailto:" if kind == "mailto:" else "HTTP link"
            errors.append(f'"{link}" should only contain one {one}')
        else:
            seen.add(kind)
            links.append(link)
    return links, ", ".join(errors)


def _list_unsubscribe(message: CapturedMessage) -> dict[str, Any]:
    header = message.header("List-Unsubscribe") or ""
    if not header:
        return {"Header": "", "Links": [], "Errors": "", "HeaderPost": ""}
    links, errors = _unsubscribe_links(header)
    post = message.header("List-Unsubscribe-Post") or ""
    return {"Header": header, "Links": links, "Errors": errors, "HeaderPost": post}


def _message(message: CapturedMessage) -> dict[str, Any]:
    """Mailpit's Message, with ``Read`` too: always true, as Mailpit sent it before 1.9
    and as mailpit-api-client (PyPI) still needs it."""
    addresses = message.addresses
    inline = [*_listed(message.inline_parts), *_listed(message.other_parts)]
    attachments = _listed(message.attachment_parts)
    contents = message.part_contents({p.part_id for p in (*inline, *attachments)})
    return_path = (message.header("Return-Path") or "").strip().strip("<>")
    if not return_path and addresses.from_ is not None:
        return_path = addresses.from_.address
    return {
        "ID": message.id,
        "MessageID": _message_id(message),
        "Read": True,
        "From": _address(addresses.from_),
        "To": _address_list(addresses.to),
        "Cc": _address_list(addresses.cc),
        "Bcc": _address_list(addresses.bcc),
        "ReplyTo": _address_list(addresses.reply_to),
        "ReturnPath": return_path,
        "Subject": message.subject or "",
        "ListUnsubscribe": _list_unsubscribe(message),
        "Date": _rfc3339(message.date or _created(message)),
        "Tags": [],
        "Username": message.auth_user or "",
        "Text": message.body_text,
        "HTML": message.body_html,
        "Size": message.size,
        "Inline": [_attachment(p, contents.get(p.part_id, b"")) for p in inline],
        "Attachments": [_attachment(p, contents.get(p.part_id, b"")) for p in attachments],
    }


_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _canonical_header_key(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: ``message-id`` is ``Message-Id``; a name
    with characters a header name may not have is left as it is."""
    if not _HEADER_TOKEN.fullmatch(name):
        return name
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


# Search ----------------------------------------------------------------------------------

Matcher = Callable[[CapturedMessage], bool]


def _search_words(query: str) -> list[str]:
    """Mailpit's ArgsParser: words split at spaces, except inside double quotes, which
    are then dropped (so ``subject:"two words"`` is one word)."""
    words: list[str] = []
    current: list[str] = []

    def end_word() -> None:
        word = "".join(current).replace('"', "").strip()
        if word:
            words.append(word)
        current.clear()

    quoted = False
    for char in query:
        if char == '"':
            quoted = not quoted
            current.append(char)
        elif char == " " and not quoted:
            end_word()
        else:
            current.append(char)
    end_word()
    return words


def _addresses_text(message: CapturedMessage, field: str) -> str:
    addresses = message.addresses
    found: Iterable[Address | None] = {
        "to": addresses.to,
        "from": (addresses.from_,),
        "cc": addresses.cc,
        "bcc": addresses.bcc,
        "reply-to": addresses.reply_to,
    }[field]
    # One line per address (search words never hold a line break).
    return "\n".join(f"{a.name} {a.address}".lower() for a in found if a is not None)


_ADDRESS_FIELDS = ("to", "from", "cc", "bcc", "reply-to")
_SIZE = re.compile(r"(\d+)(\.\d+)?\s?([a-z]{1,2})?")


def _size_in_bytes(value: str) -> int:
    """Mailpit's sizeToBytes: ``2kb``, ``4MB``, ``1.5m``, ``300``; 0 if not a size."""
    match = _SIZE.fullmatch(value.lower())
    if match is None:
        return 0
    number = float(match[1] + (match[2] or ""))
    unit = match[3] or ""
    factor = {"": 1, "k": 1024, "kb": 1024, "m": 1024 * 1024, "mb": 1024 * 1024}.get(unit, 0)
    return int(number * factor)


def _date(value: str, zone: tzinfo | None) -> datetime | None:
    """An ISO 8601 date or time, in ``zone`` (else local time) if it names none."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()
    return moment


def _matcher(word: str, zone: tzinfo | None) -> Matcher | None:
    """What one search word asks for, as Mailpit's searchQueryBuilder reads it;
    None where Mailpit adds no condition."""
    if not search_form(word):
        return None
    lowered = word.lower()
    exclude = len(word) > 1 and word[0] in "-!"
    if exclude:
        word, lowered = word[1:], lowered[1:]

    def unless(test: Matcher) -> Matcher:
        return (lambda m: not test(m)) if exclude else test

    field = next((f for f in _ADDRESS_FIELDS if lowered.startswith(f + ":")), None)
    if field is not None:
        value = search_form(word[len(field) + 1 :])
        if not value:
            return None
        return unless(lambda m: value in _addresses_text(m, field))
    if lowered.startswith("addressed:"):
        value = search_form(word[10:])
        if not value:
            return None
        return unless(lambda m: any(value in _addresses_text(m, f) for f in _ADDRESS_FIELDS))
    if lowered.startswith("subject:"):
        phrase = word[8:].lower()
        if not phrase:
            return None
        return unless(lambda m: phrase in (m.subject or "").lower())
    if lowered.startswith("message-id:"):
        value = search_form(word[11:])
        if not value:
            return None
        return unless(lambda m: value in _message_id(m).lower())
    if lowered.startswith("tag:") or lowered == "is:tagged":
        # fakesmtp keeps no tags: no message has one.
        if lowered.startswith("tag:") and not search_form(word[4:]):
            return None
        return unless(lambda m: False)
    if lowered in ("is:read", "is:unread"):
        wanted = lowered == "is:read"
        return unless(lambda m: m.read is wanted)
    if lowered in ("has:inline", "has:inlines"):
        return unless(lambda m: bool(m.inline_parts))
    if lowered in ("has:attachment", "has:attachments"):
        return unless(lambda m: bool(m.attachment_parts))
    if lowered.startswith(("after:", "before:")):
        after = lowered.startswith("after:")
        text = search_form(word[6 if after else 7 :]).upper()
        moment = _date(text, zone) if text else None
        if moment is None:
            return None  # as Mailpit: a date it cannot read is left out of the search
        # Mailpit's bounds are inclusive both ways, so -after: is "at or before".
        if after != exclude:
            return lambda m: _created(m) >= moment
        return lambda m: _created(m) <= moment
    for prefix in ("larger:", "smaller:"):
        size = _size_in_bytes(search_form(word[len(prefix) :])) if lowered.startswith(prefix) else 0
        if size > 0:
            # As Mailpit: -larger:N is "smaller than N", not "at most N".
            if (prefix == "larger:") != exclude:
                return lambda m: m.size > size
            return lambda m: m.size < size
    phrase = search_form(lowered)
    return unless(lambda m: phrase in m.search_text)


def _search(
    messages: Sequence[CapturedMessage], query: str, zone: tzinfo | None
) -> list[CapturedMessage]:
    """The messages (newest first) that match every word of ``query``."""
    matchers = [m for m in (_matcher(w, zone) for w in _search_words(query)) if m is not None]
    return [message for message in messages if all(test(message) for test in matchers)]


# Routes ----------------------------------------------------------------------------------


def _find(request: Request) -> CapturedMessage | Response:
    """The message the path names: by id, or ``latest`` (the newest one, or the newest
    matching ``?query=``); else the answer Mailpit gives."""
    server = _server(request)
    message_id = request.path_params["id"]
    if message_id != "latest":
        message = server.message(message_id)
        return message if message is not None else _page_not_found()
    query = request.query_params.get("query", "").strip()
    messages = server.messages()
    candidates = _search(messages, query, _timezone(request)) if query else messages
    return candidates[0] if candidates else _no_latest_message()


def list_messages(request: Request) -> Response:
    messages = _server(request).messages()
    start, limit = _start_limit(request)
    # As Mailpit: a limit of 0 lists every message, whatever the start.
    page = messages[start : start + limit] if limit > 0 else messages
    return JSONResponse(_messages_summary(messages, messages, start, page))


def search(request: Request) -> Response:
    query = request.query_params.get("query", "").strip()
    if not query:
        return _bad_request("Error: no search query")
    start, limit = _start_limit(request)
    messages = _server(request).messages()
    matched = _search(messages, query, _timezone(request))
    return JSONResponse(_messages_summary(messages, matched, start, matched[start : start + limit]))


def delete_search(request: Request) -> Response:
    query = request.query_params.get("query", "").strip()
    if not query:
        return _bad_request("Error: no search query")
    server = _server(request)
    matched = _search(server.messages(), query, _timezone(request))
    server.delete_messages(m.id for m in matched)
    return _ok()


def get_message(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    found.read = True  # as Mailpit: reading a message marks it read
    return JSONResponse(_message(found))


def get_headers(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    headers: dict[str, list[str]] = {}
    for name, value in found.raw_headers():
        headers.setdefault(_canonical_header_key(name), []).append(value)
    # Go's JSON encoder writes a map's keys sorted.
    return JSONResponse(dict(sorted(headers.items())))


def get_raw(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    headers = {"content-type": "text/plain; charset=utf-8"}
    if request.query_params.get("dl") == "1":
        headers["content-disposition"] = f'attachment; filename="{found.id}.eml"'
    return Response(found.raw, headers=headers)


def get_part(request: Request) -> Response:
    found = _find(request)
    if isinstance(found, Response):
        return found
    part_id = request.path_params["part_id"]
    # Mailpit serves the inline, other and attachment parts, never a body part.
    parts = (*found.inline_parts, *found.other_parts, *found.attachment_parts)
    part = next((p for p in parts if p.part_id == part_id), None)
    if part is None:
        return _page_not_found()
    content = found.part_contents({part_id}).get(part_id, b"")
    # Go's url.PathEscape, which Mailpit puts in the file name.
    name = quote(part.filename or part.content_id, safe="$&+:=@")
    return Response(
        content,
        headers={
            "content-type": _header_value(part.content_type, "application/octet-stream"),
            "content-disposition": f'inline; filename="{name}"',
        },
    )


def _header_value(value: str, fallback: str) -> str:
    """``value`` if it can go in an HTTP header as it is (printable ASCII), else
    ``fallback``: a mangled part's type may hold any byte the message held."""
    return value if value.isascii() and value.isprintable() else fallback


class _BadBody(ValueError):
    """A request body Go's JSON decoder would refuse; the text is Mailpit's 400 answer."""


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as Go's json.Decoder fills a struct from it: the first JSON value,
    an object or null; anything after it is not read."""
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise _BadBody("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos == 0:  # Go's words for the usual case, a body that is not JSON at all
            reason = f"invalid character {text[0]!r} looking for beginning of value"
        else:
            reason = f"invalid JSON: {exc.msg}"
        raise _BadBody(reason) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _BadBody(f"json: cannot unmarshal {type(value).__name__} into Go value")
    return value


def _field(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """A struct field as Go's decoder fills it: the key as written, else one that
    differs only in case; null or missing is the default; a wrong type, an error."""
    value: Any = data.get(name)
    if name not in data:
        value = next((v for k, v in data.items() if k.lower() == name.lower()), None)
    if value is None:
        return default
    if kind is list:  # lists here are lists of strings, []string in Mailpit's structs
        fits = isinstance(value, list) and all(isinstance(i, str) for i in value)
    else:
        fits = isinstance(value, kind)
    if not fits:
        raise _BadBody(f"json: cannot unmarshal into Go struct field {name}")
    return value


async def delete_messages(request: Request) -> Response:
    """``{"IDs": [...]}`` deletes those; no body, no IDs, or a body that is not such
    JSON (a form, say) deletes every message, as in Mailpit."""
    server = _server(request)
    try:
        ids: list[str] = _field(_json_object(await request.body()), "IDs", list, [])
    except _BadBody:
        ids = []
    if ids:
        server.delete_messages(ids)
    else:
        server.clear_messages()
    return _ok()


async def set_read_status(request: Request) -> Response:
    """``{"Read": bool, "IDs": [...]}`` or ``{"Read": bool, "Search": "..."}``; with
    neither, every message."""
    try:
        data = _json_object(await request.body())
        read: bool = _field(data, "Read", bool, False)
        ids: list[str] = _field(data, "IDs", list, [])
        query: str = _field(data, "Search", str, "")
    except _BadBody as exc:
        return _bad_request(str(exc))
    if ids and query:
        return _bad_request("You may specify either IDs or a search query, not both")
    server = _server(request)
    messages = server.messages()
    if query:
        messages = await run_in_threadpool(_search, messages, query, _timezone(request))
    elif ids:
        messages = [m for m in map(server.message, ids) if m is not None]
    for message in messages:
        message.read = read
    return _ok()


ROUTES: tuple[Route, ...] = (
    Route("/api/v1/messages", list_messages, methods=["GET"]),
    Route("/api/v1/messages", set_read_status, methods=["PUT"]),
    Route("/api/v1/messages", delete_messages, methods=["DELETE"]),
    Route("/api/v1/search", search, methods=["GET"]),
    Route("/api/v1/search", delete_search, methods=["DELETE"]),
    Route("/api/v1/message/{id}/part/{part_id}", get_part, methods=["GET"]),
    Route("/api/v1/message/{id}/headers", get_headers, methods=["GET"]),
    Route("/api/v1/message/{id}/raw", get_raw, methods=["GET"]),
    Route("/api/v1/message/{id}", get_message, methods=["GET"]),
)
