"""Address and header rules: what may go into a message's headers.

One set of rules, used twice: by the HTTP schemas (`service.models`), which turn
a violation into a 422 naming the field, and by the renderer
(`service.mailer.render`), which checks again so that rendering is safe on its
own. Each raises ValueError with a message fit for a caller.
"""

from __future__ import annotations

import contextlib
import re

import idna
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

__all__ = [
    "MAX_HEADER_NAME",
    "RESERVED_HEADERS",
    "bad_character",
    "canonical_address",
    "check_encodable",
    "check_header_names",
    "check_header_text",
    "parse_address",
    "suppression_key",
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

# Longest header name accepted: a header line must stay under 998 octets, and no
# legitimate extension header comes near this.
MAX_HEADER_NAME = 76
# RFC 5322 3.6.8: field-name = 1*ftext, ftext = printable US-ASCII except ":".
_FIELD_NAME = re.compile(rf"[\x21-\x39\x3b-\x7e]{{1,{MAX_HEADER_NAME}}}")

# Characters that may not appear in a header-bound value, by Unicode category: Cc (C0
# and C1 controls incl. CR, LF, NUL, TAB, DEL), Zl and Zp (U+2028, U+2029, which
# str.splitlines and some mail software treat as line breaks), Cs (lone surrogates,
# which cannot be encoded). A regular expression, so that a value of megabytes is
# checked at C speed; a test holds it to unicodedata over every code point.
HEADER_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same rule as a JSON-schema pattern, so that clients and fuzzers see it.
HEADER_TEXT_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$"
SURROGATE = re.compile("[\ud800-\udfff]")

# RFC 5322 "specials" that may not appear in an unquoted display name ("." is allowed
# there by the obsolete syntax every mail client still accepts).
_PHRASE_SPECIALS = frozenset('()<>[]:;@\\,"')
_LOCALHOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*localhost")
# RFC 5322 quoted-string: quotes around anything, with '"' and '\' escaped by a backslash.
_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


# -- header values and bodies --------------------------------------------------------


def bad_character(value: str) -> str | None:
    """The first character that may not appear in a header-bound value, described."""
    found = HEADER_FORBIDDEN.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_header_text(value: str, what: str | None = None) -> str:
    """`value` unchanged, or ValueError naming its first forbidden character."""
    bad = bad_character(value)
    if bad is not None:
        where = "" if what is None else f"{what}: "
        raise ValueError(f"{where}control character {bad} is not allowed (no header injection)")
    return value


def check_encodable(value: str) -> str:
    """Bodies may hold any text, but a lone surrogate cannot be encoded as UTF-8."""
    found = SURROGATE.search(value)
    if found is not None:
        raise ValueError(f"lone surrogate U+{ord(found.group()):04X} is not valid text")
    return value


def check_header_names(headers: dict[str, str]) -> None:
    """Extra headers: RFC 5322 names, none reserved or given twice (names ignore case)."""
    seen: set[str] = set()
    for name in headers:
        if not _FIELD_NAME.fullmatch(name):
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


# -- addresses ---------------------------------------------------------------------


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


# The common address, checked without email-validator (which costs about a tenth of
# a millisecond an address, the largest part of validating a request): an ASCII
# dot-atom local part at a host name of two or more letter-digit-hyphen labels under
# an alphabetic top-level label, with no "--" (so no Punycode) and no special-use
# name. email-validator accepts every address this accepts, with the same parts (a
# property test holds it to that); everything else goes to email-validator.
_COMMON_ADDRESS = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_SPECIAL_USE_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)


def common_addr_spec(addr: str) -> tuple[str, str] | None:
    """(local part, lower-case domain) of a common address (see _COMMON_ADDRESS), or
    None: then only email-validator can tell."""
    if len(addr) > 254:
        return None
    found = _COMMON_ADDRESS.fullmatch(addr)
    if found is None:
        return None
    local, domain = found.group(1), found.group(2).lower()
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return None
    if domain in SPECIAL_USE_DOMAIN_NAMES or domain.endswith(_SPECIAL_USE_SUFFIXES):
        return None
    return local, domain


def _validate_addr_spec(addr: str) -> tuple[str, str]:
    """(local part, domain) of a syntactically valid addr-spec, domain in ASCII lower case.

    email-validator refuses special-use domains; "localhost" is one, yet it is MAIL_FROM's
    default and what development relays accept, so it (and its subdomains) pass here.
    """
    common = common_addr_spec(addr)
    if common is not None:
        return common
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
    check_header_text(value)
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


def suppression_key(address: str) -> str:
    """The form an address is listed under in the suppression list, and looked up
    by: the domain in ASCII (IDNA, as the envelope carries it, so that a bounce
    naming `ana@bücher.de` finds `ana@xn--bcher-kva.de`), the whole lower-cased
    (the local part is case-sensitive in principle and never in practice, and a
    bounce often reports it in another case than we sent)."""
    local, at, domain = address.strip().rpartition("@")
    if at and not domain.isascii():
        # A domain IDNA refuses is not one we could have sent to: kept as it is.
        with contextlib.suppress(idna.IDNAError):
            domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{local}{at}{domain}".lower()
