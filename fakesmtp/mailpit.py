"""Mailpit's API v1 on fakesmtp's HTTP port, so that Mailpit clients work unchanged.

(Being built: the routes come with issue 16.)
"""

from __future__ import annotations

from starlette.routing import Route

ROUTES: tuple[Route, ...] = ()
