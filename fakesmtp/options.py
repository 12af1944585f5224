"""ServerOptions: everything a FakeSMTPServer can be told, checked once when it is built.

``FakeSMTPServer(...)`` and ``fakesmtp_factory(...)`` take these fields as
arguments; the CLI builds one from its parsed arguments. A bad combination is a
``ValueError`` here, before any thread or socket exists.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from functools import cached_property
from typing import Any

from fakesmtp.faults import FaultRule
from fakesmtp.policies import Clock, RateLimit


@dataclass(frozen=True)
class ServerOptions:
    """How one fake relay listens and behaves.

    ``port=0`` picks a free port; ``http_port=None`` turns the HTTP API off and
    ``0`` picks a free port for it. ``greylist``: seconds a sender/recipient
    pair must wait before a retry is accepted. ``rate_limit``: ``"100/s"`` or a
    :class:`RateLimit`; over it MAIL gets ``rate_limit_code``, 451 or 421.
    ``max_per_connection``: 421 and close after that many messages on one
    connection. ``blackhole``: accept with 250 and keep nothing.
    ``smtputf8=False``: do not offer SMTPUTF8, as many relays. ``pipelining=False``:
    do not offer PIPELINING (RFC 2920), as a few old relays. ``chunking=False``: do
    not offer CHUNKING (RFC 3030 BDAT), as many relays. ``bounce_relay``:
    ``(host, port)`` of the SMTP server that ``bounce`` rules send their DSNs
    through (None: they send none and count a failure). ``clock`` and
    ``sleep``: for tests that must not wait in real time.
    """

    # The first twelve may be passed by position, as FakeSMTPServer always took them.
    port: int = 0
    http_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    implicit_tls: bool = False
    require_tls: bool = False
    auth: tuple[str, str] | None = None
    latency: float = 0.0
    faults: Iterable[FaultRule] = ()
    seed: int | None = None
    max_messages: int = 10000
    max_size: int | None = None
    _: KW_ONLY
    host: str = "127.0.0.1"
    greylist: float | None = None
    rate_limit: str | RateLimit | None = None
    rate_limit_code: int = 451
    max_per_connection: int | None = None
    blackhole: bool = False
    smtputf8: bool = True
    pipelining: bool = True
    chunking: bool = True
    bounce_relay: tuple[str, int] | None = None
    clock: Clock = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if (self.implicit_tls or self.require_tls) and self.tls_cert is None:
            raise ValueError("implicit_tls and require_tls need tls_cert and tls_key")
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError("max_size must be positive")
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        if self.max_per_connection is not None and self.max_per_connection < 1:
            raise ValueError("max_per_connection must be at least 1")
        if self.rate_limit_code not in (421, 451):
            raise ValueError("rate_limit_code must be 421 or 451")
        if self.greylist is not None and self.greylist < 0:
            raise ValueError("greylist must not be negative")
        if self.bounce_relay is not None:
            _check_relay(self.bounce_relay)
        # A generator of rules would be used up by the first server built from it.
        object.__setattr__(self, "faults", tuple(self.faults))
        self.limit  # noqa: B018 - parse a rate_limit string now, so a bad one fails here

    @cached_property
    def limit(self) -> RateLimit | None:
        """``rate_limit`` as a :class:`RateLimit`, whichever way it was given."""
        if isinstance(self.rate_limit, str):
            return RateLimit.parse(self.rate_limit)
        return self.rate_limit


def _check_relay(relay: object) -> None:
    if not (
        isinstance(relay, tuple)
        and len(relay) == 2
        and isinstance(relay[0], str)
        and relay[0]
        and isinstance(relay[1], int)
        and not isinstance(relay[1], bool)
        and 1 <= relay[1] <= 65535
    ):
        raise ValueError(f"bounce_relay must be (host, port) with a port 1-65535, not {relay!r}")
