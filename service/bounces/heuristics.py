"""Bounces that are not RFC 3464 reports, through flufl.bounce's detectors.

flufl.bounce knows the formats of Exim, qmail, Postfix's older notifications, Exchange,
and dozens of others by heuristics: some fifty regular expressions run over every line
of every part. Several of them are quadratic or worse in a line's length (`<[^>]*>`
on a line of "<<<<...", `.*<[^>]*>`): on a hostile line of a megabyte they run for
minutes. So the detectors are given the message shortened first: at most TEXT_BYTES
of decoded text in all, in lines of at most LINE_BYTES, and header fields of at most
HEADER_CHARS. Every format they know names its addresses in the first few lines.
"""

from __future__ import annotations

import re
from email.message import Message

from flufl.bounce import all_failures

from service.bounces.fields import address

__all__ = ["HEADER_CHARS", "LINE_BYTES", "TEXT_BYTES", "failures"]

TEXT_BYTES = 32 * 1024
LINE_BYTES = 256
HEADER_CHARS = 8 * 1024

_LONG_LINE = re.compile(rb"[^\r\n]{%d}" % LINE_BYTES)


def failures(msg: Message[str, str]) -> tuple[list[str], list[str]]:
    """The (temporary, permanent) failures flufl.bounce finds in `msg`, as plain addresses,
    sorted. Shortens `msg` in place first (see the module's docstring)."""
    _shorten(msg)
    # flufl.bounce 6.0's Yale detector indexes the addresses of From, and raises on a
    # message without one (IndexError); all_failures then stops, the detectors after it
    # unasked, and logs the traceback. An empty address list gives it nothing to look at.
    if not (msg.get("From") or "").strip():
        del msg["From"]
        msg["From"] = "<>"
    temporary, permanent = all_failures(msg)
    return _decoded(temporary), _decoded(permanent)


def _shorten(msg: Message[str, str]) -> None:
    """Long header fields cut, every leaf's text decoded, cut to what is left of
    TEXT_BYTES and wrapped at LINE_BYTES."""
    budget = TEXT_BYTES
    for part in msg.walk():
        long_fields = {name for name, value in part.items() if len(value) > HEADER_CHARS}
        for name in long_fields:
            values = part.get_all(name, [])
            del part[name]
            for value in values:
                part[name] = value[:HEADER_CHARS]
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        text = data[:budget] if isinstance(data, bytes) else b""
        budget -= len(text)
        # Decoded once here, so that a base64 or quoted-printable part cannot bring back
        # the long lines on the detectors' own decoding.
        del part["Content-Transfer-Encoding"]
        wrapped = _LONG_LINE.sub(rb"\g<0>\n", text)
        # Stored as text, so that reading it never decodes by the part's charset, which
        # a stranger wrote ("utf\x00": ValueError from the email package). The detectors
        # skip non-ASCII addresses anyway.
        part.set_payload(wrapped.decode("utf-8", "replace"))


def _decoded(addresses: frozenset[bytes]) -> list[str]:
    # Bytes: ASCII from most detectors, whatever the body held from Postfix's.
    plain = (address(a.decode("utf-8", "replace")) for a in sorted(addresses))
    return [a for a in plain if a is not None]
