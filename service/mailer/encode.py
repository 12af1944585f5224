"""How a message's parts are encoded: the compat32 builders and the fast path.

The common case (ASCII addresses, foldable headers) is built with the email
package's compat32 classes, about five times cheaper than `EmailMessage` with
`policy.default`. The fast path (`render_fast`) writes the same bytes directly:
header lines folded exactly as compat32 folds them, bodies encoded with binascii;
a property test holds it to the compat32 classes' output. Bodies the fast path
cannot match (those with CR) take `render_compat32`; anything unusual (raw UTF-8
headers, words too long for compat32 to fold) takes `render_policy`.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import functools
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email import charset as _charset
from email.header import Header
from email.message import EmailMessage, Message
from typing import Any

__all__ = [
    "FilePart",
    "compat32_folds",
    "fast_body_ok",
    "render_compat32",
    "render_fast",
    "render_policy",
]

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


def compat32_folds(name: str, value: str) -> bool:
    """Whether compat32 can fold this header within 78 columns.

    compat32 folds only at whitespace. A word too long for the first line after
    "Name: " is pushed to a continuation line, leaving a value that unfolds with a
    leading space; one longer than a whole line is left over-long. Either way the
    message takes the modern policy, which splits long words into encoded-words.
    """
    limit = _FOLD_WIDTH - len(name) - 2
    return all(len(word) <= limit for word in value.split())


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


def render_compat32(headers: list[tuple[str, str]], body: str | None, html: str | None) -> bytes:
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
# render_compat32.

# Characters the fast path leaves to the compat32 path: CR (the generator turns a lone
# CR into a line break), and the other ASCII controls that str.splitlines treats as
# line ends (_charset_for's line-length check uses it; in a non-ASCII text they do not
# matter, as QP and base64 encode them).
_SLOW_BODY_CHARS = re.compile("[\r\x0b\x0c\x1c-\x1e]")
# 76 base64 characters per line, as email.base64mime writes them.
_B64_CHUNK = 57
_CTE = "Content-Transfer-Encoding: "


def fast_body_ok(text: str | None) -> bool:
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


def render_fast(headers: list[tuple[str, str]], body: str | None, html: str | None) -> bytes:
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


@dataclass(frozen=True, slots=True)
class FilePart:
    """An attachment's bytes and how it is labelled."""

    filename: str
    content_type: str  # type/subtype
    content: bytes
    content_id: str | None = None  # inline, in a multipart/related beside the html


def render_policy(
    headers: list[tuple[str, Any]],
    body: str | None,
    html: str | None,
    *,
    utf8: bool,
    files: Sequence[FilePart] = (),
) -> bytes:
    """The modern policy, which also builds every message with files:

    multipart/mixed
      multipart/alternative      (or the one text part)
        text/plain
        multipart/related        (only with inline files)
          text/html
          image/png; Content-ID <logo>, Content-Disposition inline
      application/pdf; Content-Disposition attachment; filename (RFC 2231 if not ASCII)
    """
    msg = EmailMessage(policy=_POLICY_UTF8 if utf8 else _POLICY)
    for name, value in headers:
        msg[name] = value
    if body is not None:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html or "", subtype="html")
    if not files:
        return msg.as_bytes()
    # The email package builds the structure and every header (RFC 2231 names),
    # with a random placeholder for each file; the files' own base64 is spliced in
    # after. Through the package a file would be held as a base64 str, then as its
    # lines, then as generated bytes: about five copies at once where this keeps two.
    # (A placeholder's 64 random characters are not found anywhere else; a boundary
    # starts with "==" and cannot occur in base64 text.)
    placeholders: dict[bytes, FilePart] = {}

    def placeholder(file: FilePart) -> bytes:
        token = os.urandom(48)
        placeholders[binascii.b2a_base64(token, newline=False)] = file
        return token

    inline = [f for f in files if f.content_id is not None]
    if inline:
        html_part = msg.get_body(("html",))
        if html_part is None:
            raise ValueError("an inline attachment (content_id) needs an html body")
        for file in inline:
            maintype, subtype = file.content_type.split("/", 1)
            html_part.add_related(
                placeholder(file),
                maintype,
                subtype,
                cid=f"<{file.content_id}>",
                disposition="inline",
                filename=file.filename,
            )
    for file in files:
        if file.content_id is None:
            maintype, subtype = file.content_type.split("/", 1)
            msg.add_attachment(placeholder(file), maintype, subtype, filename=file.filename)
    return _splice(msg.as_bytes(), placeholders)


# Base64 a file in pieces of this many bytes (1,000 lines of 76 characters each).
_B64_PIECE = _B64_CHUNK * 1000


def _splice(skeleton: bytes, placeholders: dict[bytes, FilePart]) -> bytes:
    """`skeleton` with each placeholder line replaced by its file's base64 lines."""
    pattern = re.compile(b"|".join(re.escape(token) for token in placeholders))
    pieces: list[bytes] = []
    start = 0
    for found in pattern.finditer(skeleton):
        pieces.append(skeleton[start : found.start()])
        content = placeholders[found.group()].content
        for offset in range(0, len(content), _B64_PIECE):
            lines = base64.encodebytes(content[offset : offset + _B64_PIECE])
            pieces.append(lines.replace(b"\n", b"\r\n"))
        start = found.end() + 2  # the placeholder's own CRLF: each piece ends with one
    pieces.append(skeleton[start:])
    return b"".join(pieces)
