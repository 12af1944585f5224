"""Record ids: UUIDv7 (RFC 9562) as 32 hex digits, time-ordered.

A random id (uuid4) lands on a random leaf of the primary-key index, so every
insert dirties another page and a batch of inserts writes as many pages as it has
rows. UUIDv7 starts with the time in milliseconds: new ids go to the end of the
index, a batch shares its pages, and the ids still cannot be guessed (74 random
bits). The same id, with the sender's domain, is the message's Message-ID, so
a mail found in someone's inbox leads to its record.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_A = (1 << 12) - 1  # 12 random bits after the version
_RAND_B = (1 << 62) - 1  # 62 random bits after the variant


def new_id() -> str:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | _VERSION | (rand >> 62 & _RAND_A) << 64
    value |= _VARIANT | rand & _RAND_B
    return f"{value:032x}"
