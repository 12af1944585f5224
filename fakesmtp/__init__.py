"""fakesmtp: a fake SMTP server that captures mail and fails on purpose."""

from __future__ import annotations

from fakesmtp.capture import CapturedMessage
from fakesmtp.faults import FaultRule, FaultSpecError
from fakesmtp.options import ServerOptions
from fakesmtp.policies import RateLimit
from fakesmtp.server import FakeSMTPServer

__all__ = [
    "CapturedMessage",
    "FakeSMTPServer",
    "FaultRule",
    "FaultSpecError",
    "RateLimit",
    "ServerOptions",
]
