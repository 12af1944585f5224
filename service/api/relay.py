"""RelayFeatures: what the relay advertises, asked once and remembered for a while."""

from __future__ import annotations

import time
from collections.abc import Callable

from service.errors import DeliveryError
from service.types import Sender

__all__ = ["RelayFeatures"]


class RelayFeatures:
    """A message whose address has a non-ASCII local part can only travel with
    SMTPUTF8. Asking the relay at request time turns "202, then failed" into a
    clear 422 at once. The answer is cached: relays do not change it often, and
    the accept path must not open a connection per request.
    """

    TTL_SECONDS = 300.0

    def __init__(self, sender: Sender, clock: Callable[[], float] = time.monotonic) -> None:
        self._sender = sender
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}

    def offers(self, extension: str) -> bool | None:
        """True or False; None when the relay cannot be reached (then we do not know)."""
        now = self._clock()
        cached = self._known.get(extension)
        if cached is not None and now - cached[1] < self.TTL_SECONDS:
            return cached[0]
        try:
            offered = self._sender.offers(extension)
        except DeliveryError:
            return None
        self._known[extension] = (offered, now)
        return offered
