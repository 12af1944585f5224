"""ConnectionPool: idle senders shared by the synchronous path's request threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

from service.errors import DeliveryError
from service.types import RenderedMessage, Sender, SenderFactory, SendResult

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Thread-safe pool of idle senders made by `connect` (one per request thread at
    a time); satisfies the Sender protocol itself, so the sync path sends through it."""

    def __init__(self, connect: SenderFactory, *, max_idle: int = 8):
        self._connect = connect
        self._max_idle = max_idle
        self._idle: list[Sender] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def is_open(self) -> bool:
        return not self._closed

    def _borrow(self) -> Sender:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: least likely stale
        return self._connect()

    def _give_back(self, sender: Sender) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(sender)
                return
        sender.close()

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        """Borrow a sender, send one attempt, give it back (or drop it on error).
        `next_message` is ignored: the next send may borrow another sender."""
        sender = self._borrow()
        try:
            result = sender.send(message, before_dot)
        except DeliveryError:
            # A sender closes a session it cannot trust; one left open was RSET
            # after a refusal and is as good as new.
            if sender.is_open:
                self._give_back(sender)
            else:
                sender.close()
            raise
        except BaseException:
            sender.close()
            raise
        self._give_back(sender)
        return result

    def offers(self, extension: str) -> bool:
        """Sender.offers on a pooled sender."""
        sender = self._borrow()
        try:
            offered = sender.offers(extension)
        except BaseException:
            sender.close()
            raise
        self._give_back(sender)
        return offered

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sender in idle:
            sender.close()
