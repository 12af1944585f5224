"""Bounces, read: the parsing half of bounce handling, pure (no I/O, no database).

- `verp` puts a record id in the envelope sender (`bounces+<id>@domain`) and reads
  it back from the address a bounce arrives at;
- `parse` reads a bounce's bytes and never raises: RFC 3464 reports itself, other
  formats through `heuristics` (flufl.bounce, on a shortened copy); `fields` makes
  every string taken from a bounce short, plain and on one line.

The names below are re-exported so that `from service import bounces` reads as one
module to its callers.
"""

from __future__ import annotations

from service.bounces.parse import (
    MAX_BYTES,
    MAX_DIAGNOSTIC,
    MAX_RECIPIENTS,
    Bounce,
    BouncedRecipient,
    BounceFormat,
    parse_bounce,
)
from service.bounces.verp import record_id_from_verp, verp_address

__all__ = [
    "MAX_BYTES",
    "MAX_DIAGNOSTIC",
    "MAX_RECIPIENTS",
    "Bounce",
    "BounceFormat",
    "BouncedRecipient",
    "parse_bounce",
    "record_id_from_verp",
    "verp_address",
]
