"""`python -m service.devserver` (`nox -s dev`): the service and fakesmtp together.

Starts fakesmtp (SMTP and its HTTP API) in this process, then the service on a SQLite
file with a freshly generated API key, and prints where everything is and a ready curl
command. Ctrl-C (or SIGTERM) stops both.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import shlex
import signal
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.devserver",
        description="Run the mail service with a fake SMTP relay for local development.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="where both listen")
    parser.add_argument("--port", type=int, default=8000, help="service port (0: any free)")
    parser.add_argument("--smtp-port", type=int, default=1025, help="fakesmtp SMTP port")
    parser.add_argument("--http-port", type=int, default=8025, help="fakesmtp web/API port")
    parser.add_argument(
        "--database", type=Path, default=None, help="SQLite file (default: a temporary one)"
    )
    parser.add_argument("--api-key", default=None, help="API key (default: a random one)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def banner(url: str, api_key: str, fake_url: str | None, smtp: str) -> str:
    body = '{"to": "you@example.com", "subject": "Hello", "body": "It works."}'
    curl = shlex.join(
        [
            "curl",
            "-sS",
            f"{url}/send",
            "-H",
            f"X-API-Key: {api_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]
    )
    return "\n".join(
        [
            "",
            f"  mail service   {url}   (API docs: {url}/docs)",
            f"  API key        {api_key}",
            f"  fakesmtp       smtp://{smtp}   captured mail: {fake_url}/",
            f"  try:           {curl}",
            "",
            "  Ctrl-C stops both.",
            "",
        ]
    )


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn
    from pydantic import SecretStr

    from fakesmtp import FakeSMTPServer
    from service.app import create_app
    from service.config import Settings
    from service.main import configure_logging

    args = _parse(argv)
    # uvicorn re-raises SIGTERM after its graceful shutdown; leave through the `with`
    # blocks below (stopping fakesmtp too) with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    configure_logging(args.log_level.upper())
    api_key = args.api_key or secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="mail-dev-") as scratch:
        database = args.database or Path(scratch) / "mail.db"
        with FakeSMTPServer(host=args.host, port=args.smtp_port, http_port=args.http_port) as smtp:
            settings = Settings(
                api_key=[SecretStr(api_key)],
                host=args.host,
                port=args.port,
                database_url=f"sqlite:///{database}",
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                mail_from="dev@localhost",
                log_level=args.log_level.upper(),
                # Fast feedback when playing with fault rules.
                smtp_backoff_base=0.5,
                smtp_backoff_max=5.0,
                shutdown_grace_seconds=3.0,
            )
            # Bind first, so that port 0 works and the banner shows the real port.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.host, args.port))
            url = f"http://{args.host}:{sock.getsockname()[1]}"
            config = uvicorn.Config(
                create_app(settings),
                log_config=None,
                access_log=True,
                timeout_graceful_shutdown=3,
            )
            server = uvicorn.Server(config)
            print(banner(url, api_key, smtp.http_url, f"{smtp.host}:{smtp.port}"), flush=True)
            # uvicorn re-raises Ctrl-C (KeyboardInterrupt) after its graceful shutdown.
            with contextlib.suppress(KeyboardInterrupt), sock:
                server.run(sockets=[sock])
    logging.getLogger(__name__).info("stopped")


if __name__ == "__main__":
    main()
