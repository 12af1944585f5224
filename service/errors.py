"""The exceptions that cross layers: raised in one room, handled in another.

    Exception
     ├── DeliveryError                the relay did not take the message
     │    ├── TemporaryDeliveryError  worth retrying: 4xx, lost or refused connections, timeouts
     │    └── PermanentDeliveryError  not worth retrying: 5xx, TLS trust, AUTH refused
     ├── DatabaseUnavailable          the database could not store or read (503 at the API)
     ├── IdempotencyKeyTaken          an insert lost the race for its Idempotency-Key
     ├── RecipientSuppressed          an insert names an address on the suppression list (422)
     ├── QueueFull                    QUEUE_MAXSIZE reached (503 with Retry-After)
     ├── ShuttingDown                 the service takes no new work (503)
     │    └── ClaimReleased           a claim was handed back before its final dot
     └── InstanceLocked               another live process is this instance (start-up refused)

The mailer classifies (`service.mailer.classify`); the retry policy
(`service.retry`) decides what a DeliveryError means for the message.
"""

from __future__ import annotations

__all__ = [
    "ClaimReleased",
    "DatabaseUnavailable",
    "DeliveryError",
    "IdempotencyKeyTaken",
    "InstanceLocked",
    "PermanentDeliveryError",
    "QueueFull",
    "RecipientSuppressed",
    "ShuttingDown",
    "TemporaryDeliveryError",
]


class DeliveryError(Exception):
    """A failed delivery. `code` is the SMTP reply code (None for network/TLS errors)."""

    temporary: bool = False

    def __init__(self, reply: str, *, code: int | None = None, recipient: str | None = None):
        super().__init__(reply)
        self.reply = reply
        self.code = code
        self.recipient = recipient
        # Every recipient the relay refused at RCPT when it refused them all:
        # (address, code, text), for the suppression list.
        self.refused: list[tuple[str, int, str]] = []

    def __str__(self) -> str:
        """The server's reply with its code in front and the recipient after: what
        records keep as last_error and what callers see."""
        text = self.reply.strip()
        if self.code is not None and not text.startswith(str(self.code)):
            text = f"{self.code} {text}".strip()
        if self.recipient:
            text = f"{text} (recipient {self.recipient})"
        return text


class TemporaryDeliveryError(DeliveryError):
    """Worth retrying: 4xx, connection refused/reset, timeouts."""

    temporary = True


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: 5xx, TLS verification failure, AUTH rejected."""


class DatabaseUnavailable(Exception):
    """The database could not store or read (locked past a timeout, disk full, gone)."""


class IdempotencyKeyTaken(Exception):
    """An insert lost a race: another request already stored this idempotency key."""


class RecipientSuppressed(Exception):
    """An insert named an address on the suppression list; nothing was stored.
    `index` is the message's place in a batch written whole (insert_all)."""

    def __init__(self, address: str, index: int = 0) -> None:
        super().__init__(f"{address} is on the suppression list")
        self.address = address
        self.index = index


class QueueFull(Exception):
    """The backlog bound (QUEUE_MAXSIZE) is reached; answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The worker is stopping and takes no new work; answer 503."""


class ClaimReleased(ShuttingDown):
    """The worker handed this message's claim back while it was being sent (the
    grace period ended before its final dot): the transaction is abandoned and
    the connection dropped, so the relay never takes the message from us."""


class InstanceLocked(Exception):
    """Another live process holds this instance: the SQLite file, or the INSTANCE_ID
    on PostgreSQL. Two would take back each other's claims."""
