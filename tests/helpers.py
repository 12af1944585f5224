"""Helpers shared across the test areas: a fake clock, polling, and sender doubles.

The sender doubles implement the whole `service.types.Sender` protocol (send,
offers, is_open, close) and are injected where production takes a factory
(`create_app(settings, sender_factory=...)`, `MailQueueWorker(...,
sender_factory=...)`), as httpx's `MockTransport` is passed where a transport
goes; production code has no branch for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.types import RenderedMessage, Sender, SendResult


class FakeClock:
    """A clock that moves only when told to; safe to read from several threads."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


class WrappingSender:
    """A Sender that hands every call of the protocol to `inner` (an SMTPConnection);
    a double overrides only what it changes, and the rest still behaves."""

    def __init__(self, inner: Sender) -> None:
        self.inner = inner

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        return self.inner.send(message, before_dot, next_message=next_message)

    def offers(self, extension: str) -> bool:
        return self.inner.offers(extension)

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    def close(self) -> None:
        self.inner.close()


class FailingSender:
    """A Sender with no relay behind it: every send (and every EHLO question) raises
    a fresh RuntimeError, a bug rather than an SMTP failure."""

    def __init__(self, text: str = "a bug, not an SMTP failure") -> None:
        self.text = text

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        raise RuntimeError(self.text)

    def offers(self, extension: str) -> bool:
        raise RuntimeError(self.text)

    @property
    def is_open(self) -> bool:
        return False

    def close(self) -> None:
        pass
