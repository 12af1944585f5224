"""Header fields of a bounce, read as short, plain text.

Every string a bounce gives the service (an address, a diagnostic, a Message-ID)
goes through here: unfolded, on one line, bounded, so that what a stranger wrote
is safe to store, log and send on in a webhook.
"""

from __future__ import annotations

import re
from email.message import Message
from email.policy import Compat32
from typing import TYPE_CHECKING

from service.syntax import HEADER_FORBIDDEN

__all__ = ["MAX_ADDRESS", "POLICY", "address", "header", "one_line", "strip_type"]

# RFC 5321 4.5.3.1.3: a path is at most 256 octets, its angle brackets included.
MAX_ADDRESS = 254

if TYPE_CHECKING:
    _Compat32 = Compat32[Message[str, str]]
else:  # the email classes are generic in typeshed only
    _Compat32 = Compat32


class _Policy(_Compat32):
    """compat32, whose headers stay unparsed text until asked for (so a hostile header
    costs nothing), except that raw 8-bit bytes in a header read as UTF-8 (RFC 6532:
    SMTPUTF8 bounces name UTF-8 addresses) instead of as an `email.header.Header`."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        # The parser keeps undecodable bytes as surrogate escapes; give them back.
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


POLICY = _Policy()

_WHITESPACE = re.compile(r"\s+")
# "rfc822; user@example.com", "smtp; 550 5.1.1 ...": the type before the value.
_TYPE_PREFIX = re.compile(r"\s*[A-Za-z][A-Za-z0-9-]*\s*;")


def header(msg: Message[str, str], name: str) -> str | None:
    """The field `name` unfolded and trimmed; None when absent or empty."""
    value = msg.get(name)
    if value is None:
        return None
    return _WHITESPACE.sub(" ", value).strip() or None


def strip_type(value: str) -> str:
    """The value after its type: "rfc822; a@b" -> "a@b", "smtp; 550 ..." -> "550 ..."."""
    match = _TYPE_PREFIX.match(value)
    return value[match.end() :].strip() if match else value


def address(text: str) -> str | None:
    """A plain `local@domain` from "<local@domain>", " local@domain ", "Name <local@domain>";
    None when what is left is not shaped like an address."""
    start = text.find("<")
    if start != -1:
        end = text.find(">", start)
        text = text[start + 1 : end] if end != -1 else text[start + 1 :]
    plain = text.strip()
    local, at, domain = plain.rpartition("@")
    if not at or not local or not domain or len(plain) > MAX_ADDRESS:
        return None
    if _WHITESPACE.search(plain) or HEADER_FORBIDDEN.search(plain):
        return None
    return plain


def one_line(text: str, limit: int) -> str | None:
    """`text` with control characters as spaces, on one line, at most `limit` characters;
    None when nothing is left."""
    # Cut before cleaning, so that a field of a megabyte costs what a short one does.
    cleaned = _WHITESPACE.sub(" ", HEADER_FORBIDDEN.sub(" ", text[: 4 * limit])).strip()
    return cleaned[:limit] or None
