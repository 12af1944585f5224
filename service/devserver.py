"""`python -m service.devserver` (`nox -s dev`): the service and fakesmtp together.

Starts fakesmtp (SMTP and its HTTP API) in this process, then the service on a SQLite
file, and prints, once the service accepts requests, where everything is, the API key
as an `export KEY=...` line the README's examples use, and a ready curl command.

Quiet by default: one line per captured message (`--verbose` adds each SMTP command
and HTTP request). Ctrl-C, SIGTERM or SIGHUP stops both, and with
`--stop-with-parent` (what `nox -s dev` passes) so does the death of the process
that started it: nox killed by its PID does not leave a server holding the ports.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.listen import PortInUse, bind_listening_socket

if TYPE_CHECKING:
    from fakesmtp import CapturedMessage

__all__ = ["DEV_API_KEY", "main"]

# The key of a dev server listening on loopback only, the one the README's examples
# export: nothing but this machine can reach it. Elsewhere the key is random.
DEV_API_KEY = "dev-key"
# A laptop's burst (a load script, a loop of sends) fits; production's default is
# 1,000, sized to shed load early (README, QUEUE_MAXSIZE).
DEV_QUEUE_MAXSIZE = 100_000

log = logging.getLogger("service.devserver")


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
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"API key (default: {DEV_API_KEY!r} on loopback, a random one elsewhere)",
    )
    parser.add_argument(
        "--queue-maxsize",
        type=int,
        default=DEV_QUEUE_MAXSIZE,
        help=f"messages queued before 503 (default {DEV_QUEUE_MAXSIZE:,})",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log every SMTP command and HTTP request"
    )
    parser.add_argument(
        "--stop-with-parent",
        action="store_true",
        help="stop when the process that started this one exits (nox -s dev passes it)",
    )
    return parser.parse_args(argv)


def default_api_key(host: str) -> str:
    """DEV_API_KEY where only this machine can connect, a fresh random key otherwise."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return DEV_API_KEY
    if host == "localhost":
        return DEV_API_KEY
    return secrets.token_urlsafe(24)


def banner(url: str, api_key: str, fake_url: str | None, smtp: str, queue_maxsize: int) -> str:
    body = '{"to": "you@example.com", "subject": "Hello", "body": "It works."}'
    curl = shlex.join(
        [
            "curl",
            "-sS",
            f"{url}/send",
            "-H",
            "X-API-Key: $KEY",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]
    ).replace("'X-API-Key: $KEY'", '"X-API-Key: $KEY"')
    return "\n".join(
        [
            "",
            f"  mail service   {url}   (API docs: {url}/docs)",
            f"  API key        export KEY={shlex.quote(api_key)}",
            f"  fakesmtp       smtp://{smtp}   captured mail: {fake_url}/",
            f"  settings       SQLite, queue {queue_maxsize:,} messages, retries after 0.5-5 s",
            f"  try:           {curl}",
            "",
            "  Ctrl-C stops both; --verbose logs every SMTP command and HTTP request.",
            "",
        ]
    )


def log_captured(kind: str, message: CapturedMessage | None) -> None:
    """fakesmtp's store listener: the one line per message a quiet console shows."""
    if kind == "message" and message is not None:
        log.info(
            "captured #%s %s -> %s %r (%d bytes)",
            message.id,
            message.mail_from or "<>",
            ", ".join(message.rcpt_tos),
            message.subject or "",
            message.size,
        )


def quiet_loggers(verbose: bool) -> None:
    """aiosmtpd narrates about five INFO lines per message; uvicorn one per request."""
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("mail.log").setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(level)


def stop_when_orphaned(interval: float = 0.5) -> None:
    """SIGTERM ourselves when the parent that started us dies (`nox` killed by its
    PID): the graceful stop, instead of an orphan on the ports. A poll, not Linux's
    PR_SET_PDEATHSIG: the same on every platform, and half a second is soon enough."""
    parent = os.getppid()

    def watch() -> None:
        while not stopped.wait(interval):
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    stopped = threading.Event()
    threading.Thread(target=watch, name="devserver-parent-watch", daemon=True).start()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _fail(message: str) -> None:
    print(f"devserver: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise PortInUse for the first of fakesmtp's ports (option -> port) that is
    taken: its own error does not say which port it was."""
    for option, port in ports.items():
        if port:
            bind_listening_socket(host, port, option).close()


def main(argv: Sequence[str] | None = None) -> None:
    from pydantic import SecretStr

    from fakesmtp import FakeSMTPServer
    from service.app import create_app
    from service.config import Settings
    from service.main import configure_logging

    args = _parse(argv)
    # uvicorn re-raises SIGTERM after its graceful shutdown; leave through the `with`
    # blocks below (stopping fakesmtp too) with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    configure_logging("INFO")
    quiet_loggers(args.verbose)
    if args.stop_with_parent:
        stop_when_orphaned()
    api_key = args.api_key or default_api_key(args.host)
    try:
        # Bind first, so that port 0 works, the banner shows the real port, and a
        # taken port is one line before anything starts.
        sock = bind_listening_socket(args.host, args.port, "--port")
    except PortInUse as exc:
        _fail(str(exc))
    with tempfile.TemporaryDirectory(prefix="mail-dev-") as scratch, sock:
        database = args.database or Path(scratch) / "mail.db"
        smtp = FakeSMTPServer(host=args.host, port=args.smtp_port, http_port=args.http_port)
        # fakesmtp's own HTTP server would log uvicorn's start and stop lines too,
        # the same words as the service's: only the service's are shown.
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.setLevel(logging.WARNING)
        try:
            check_ports_free(
                args.host, {"--smtp-port": args.smtp_port, "--http-port": args.http_port}
            )
            smtp.start()
        except PortInUse as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"fakesmtp cannot listen: {exc}")
        uvicorn_log.setLevel(logging.NOTSET)
        smtp.subscribe(log_captured)
        try:
            settings = Settings(
                api_key=[SecretStr(api_key)],
                database_url=f"sqlite:///{database}",
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                mail_from="dev@localhost",
                log_level="INFO",
                queue_maxsize=args.queue_maxsize,
                # Fast feedback when playing with fault rules.
                smtp_backoff_base=0.5,
                smtp_backoff_max=5.0,
                shutdown_grace_seconds=3.0,
            )
            url = f"http://{args.host}:{sock.getsockname()[1]}"
            text = banner(
                url,
                api_key,
                smtp.http_url,
                f"{smtp.host}:{smtp.port}",
                args.queue_maxsize,
            )
            server = DevServer(
                uvicorn.Config(
                    create_app(settings),
                    log_config=None,
                    access_log=True,
                    timeout_graceful_shutdown=3,
                ),
                banner=text,
            )
            # A hang-up stops us as SIGTERM does (uvicorn handles only INT and TERM).
            signal.signal(
                signal.SIGHUP, lambda sig, frame: server.handle_exit(signal.SIGTERM, frame)
            )
            # uvicorn re-raises Ctrl-C (KeyboardInterrupt) after its graceful shutdown.
            with contextlib.suppress(KeyboardInterrupt):
                server.run(sockets=[sock])
        finally:
            uvicorn_log.setLevel(logging.WARNING)
            smtp.stop(raise_errors=False)
    log.info("stopped")


class DevServer(uvicorn.Server):
    """uvicorn's server, printing the banner once requests are taken: after
    "Application startup complete", not lost above the start-up's own lines."""

    def __init__(self, config: uvicorn.Config, *, banner: str) -> None:
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(self.banner, flush=True)


if __name__ == "__main__":
    main()
