"""Services: what the lifespan starts and the endpoints use, as one typed object."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from service.api.accept import SenderPolicy
from service.api.ratelimit import RateLimiter
from service.api.relay import RelayFeatures
from service.config import Settings
from service.db import Outbox
from service.group_commit import Committer
from service.metrics import Metrics
from service.queue_worker import MailQueueWorker
from service.retry import RetryPolicy
from service.types import Sender

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    metrics: Metrics
    outbox: Outbox
    worker: MailQueueWorker
    committer: Committer
    # The sync path's sender: a pool of connections, itself a Sender.
    sync_sender: Sender
    relay_features: RelayFeatures
    # Bounds the threads doing SMTP work for requests (see api/offload.py).
    smtp_slots: asyncio.Semaphore
    rate_limiter: RateLimiter | None
    sender_policy: SenderPolicy
    retry: RetryPolicy
    sleep: Callable[[float], None]  # the sync path's backoff wait
