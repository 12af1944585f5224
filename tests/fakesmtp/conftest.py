"""Fixtures for the fake SMTP server's own tests.

The plugin's fixtures are imported here as well as registered through the
``pytest11`` entry point, so this area runs before the package is installed.
"""

from __future__ import annotations

from fakesmtp.pytest_plugin import fakesmtp, fakesmtp_factory
from tests.fakesmtp.fixtures import http, server

__all__ = ["fakesmtp", "fakesmtp_factory", "http", "server"]
