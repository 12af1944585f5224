"""Opaque page cursors: the last item's position and a digest of the filters that
made the page, so a cursor cannot be replayed with other filters (which would
skip or repeat items)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from service.api.errors import validation_error

__all__ = ["bad_cursor", "decode_cursor", "encode_cursor", "filters_digest"]


def filters_digest(*values: str | None) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:12]


def encode_cursor(position: Any, filters: str) -> str:
    raw = json.dumps([position, filters], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def bad_cursor(cursor: str) -> Exception:
    return validation_error(
        ("query", "cursor"), "not a cursor of this API: pass `next_cursor` as given", cursor
    )


def decode_cursor(cursor: str, filters: str) -> Any:
    """The position `encode_cursor` was given; a 422 for anything else, or for a
    cursor made with other filters."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position, made_with = json.loads(raw)
        if not isinstance(made_with, str):
            raise ValueError(cursor)
    except (ValueError, binascii.Error, TypeError):
        raise bad_cursor(cursor) from None
    if made_with != filters:
        raise validation_error(
            ("query", "cursor"),
            "this cursor was made with other filters: repeat the first page's filters with it",
            cursor,
        )
    return position
