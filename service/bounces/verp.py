"""VERP: the record id in the envelope sender, so that a bounce names its message.

With BOUNCE_ADDRESS `bounces@mail.example.com`, the message whose record id is
`0192…` goes out with the envelope sender `bounces+0192…@mail.example.com`; its
bounce comes back to that address, whatever the bounce's body says (or fails to
say). Record ids are 32 lowercase hex digits (`service.ids`).
"""

from __future__ import annotations

import re

__all__ = ["record_id_from_verp", "verp_address"]

_RECORD_ID = re.compile(r"[0-9a-f]{32}")
# Some MTAs change the case of an address on the way back, so the id is read in either.
_RECORD_ID_ANY_CASE = re.compile(r"[0-9a-fA-F]{32}")


def _split(address: str) -> tuple[str, str]:
    """(local part, domain) at the last "@"; ValueError when either is empty."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an address: {address!r}")
    return local, domain


def verp_address(bounce_address: str, record_id: str) -> str:
    """`bounces@mail.example.com` and a record id -> `bounces+<id>@mail.example.com`."""
    if _RECORD_ID.fullmatch(record_id) is None:
        raise ValueError(f"not a record id (32 lowercase hex digits): {record_id!r}")
    local, domain = _split(bounce_address)
    return f"{local}+{record_id}@{domain}"


def record_id_from_verp(bounce_address: str, recipient: str) -> str | None:
    """The record id (lowercase) in `recipient`, an envelope recipient of incoming mail;
    None when `recipient` is not a VERP address of `bounce_address`.

    The domain and the local part's base compare without regard to case.
    """
    try:
        base, domain = _split(bounce_address)
        local, their_domain = _split(recipient)
    except ValueError:
        return None
    if their_domain.lower() != domain.lower():
        return None
    prefix, plus, record_id = local.rpartition("+")
    if not plus or prefix.lower() != base.lower():
        return None
    if _RECORD_ID_ANY_CASE.fullmatch(record_id) is None:
        return None
    return record_id.lower()
