"""Record ids: UUIDv7 (RFC 9562) as 32 hex digits, time-ordered.

A random id (uuid4) lands on a random leaf of the primary-key index, so every
insert dirties another page and a batch of inserts writes as many pages as it has
rows. UUIDv7 starts with the time in milliseconds: new ids go to the end of the
index, a batch shares its pages, and the ids still cannot be guessed (74 random
bits). The same id, with the sender's domain, is the message's Message-ID, so
a mail found in someone's inbox leads to its record.

Within one process the ids also increase strictly (RFC 9562's monotonic
method: an id made in the same millisecond as the last one is the last plus
one), so records made one after another list in the order they were made.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id"]

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_A = (1 << 12) - 1  # 12 random bits after the version
_RAND_B = (1 << 62) - 1  # 62 random bits after the variant


# os.urandom is a system call that lets go of the GIL, and getting it back from a
# busy thread can take a switch interval (5 ms): one read serves 512 ids.
_RANDOM_BYTES_PER_READ = 10 * 512

_lock = threading.Lock()
_last = 0
_random = b""
_offset = 0


def new_id() -> str:
    global _last, _random, _offset
    millis = time.time_ns() // 1_000_000
    with _lock:
        if _offset == len(_random):
            _random, _offset = os.urandom(_RANDOM_BYTES_PER_READ), 0
        rand = int.from_bytes(_random[_offset : _offset + 10], "big")
        _offset += 10
        value = (millis & ((1 << 48) - 1)) << 80 | _VERSION | (rand >> 62 & _RAND_A) << 64
        value |= _VARIANT | rand & _RAND_B
        if value <= _last:
            # Same millisecond (or the clock stepped back): one more than the last.
            # The random bits absorb the carry; version and variant stay put
            # unless 2**74 ids are made in one millisecond.
            value = _last + 1
        _last = value
    return f"{value:032x}"


def _forget_random_bytes() -> None:
    # A forked child must not make the ids its parent makes next.
    global _random, _offset
    _random, _offset = b"", 0


os.register_at_fork(after_in_child=_forget_random_bytes)
