"""Entry point: `python -m service` / `mail-service` runs the API under uvicorn.

`mail-service migrate` creates or upgrades the database schema and exits. This is the
only module that reads the environment and configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["MessageIdFormatter", "configure_logging", "main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class MessageIdFormatter(logging.Formatter):
    """The plain format, plus ` message_id=<...>` when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        message_id = getattr(record, "message_id", None)
        return text if message_id is None else f"{text} message_id={message_id}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MessageIdFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's loggers propagate to ours (we pass log_config=None).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    if level != "DEBUG":
        # Alembic narrates every plugin and context at INFO; the migration's outcome is
        # logged by service.migrations.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # flufl.bounce narrates each detector it tries (17 lines a bounce); what a
        # bounce came to is logged by service.bounces.
        logging.getLogger("flufl.bounce").setLevel(logging.WARNING)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM itself (stops accepting, drains, runs the lifespan
    # shutdown) and then re-raises the signal to the handler it found. That handler
    # is this one: a finished graceful shutdown is a successful exit, status 0.
    raise SystemExit(0)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mail-service",
        description="HTTP API that sends mail over SMTP. Configured by environment "
        "variables (see the README).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP API (the default)")
    sub.add_parser("migrate", help="create or upgrade the database schema, then exit")
    return parser.parse_args(argv)


def migrate() -> None:
    from service import db
    from service.config import load_settings
    from service.migrations import migrate as run_migrations

    settings = load_settings()
    configure_logging(settings.log_level)
    engine = db.make_engine(settings)
    try:
        revision = run_migrations(engine)
    finally:
        engine.dispose()
    logging.getLogger(__name__).info("schema is up to date (revision %s)", revision)


# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 7000


def tune_garbage_collector() -> None:
    """Keep CPython's cyclic collector from pausing the event loop for tens of ms.

    Requests waiting for their commit live long enough to be promoted to the old
    generation, which triggers full collections; each one walked every object the
    imports created (FastAPI, pydantic, SQLAlchemy: hundreds of thousands) and
    showed in the accept path's p99 (docs/benchmarks.md). `gc.freeze()` moves
    what exists after start-up out of the collector's sight for good (it is never
    garbage), and a larger young generation collects less often. Reference counting
    still frees everything else at once; only cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def serve() -> None:
    import uvicorn

    from service.app import GracePeriod, create_app
    from service.config import load_settings
    from service.errors import DatabaseUnavailable, InstanceLocked
    from service.instance import InstanceLock
    from service.listen import PortInUse, bind_listening_socket

    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        sock = bind_listening_socket(settings.host, settings.port, "PORT")
    except PortInUse as exc:
        print(f"mail-service: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        # Held until the process ends, however it ends (the kernel or the server
        # drops it): a second process as this instance would take back our claims.
        lock = InstanceLock.acquire(settings.database_url, settings.instance_name)
    except (InstanceLocked, DatabaseUnavailable) as exc:
        print(f"mail-service: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    signal.signal(signal.SIGTERM, _exit_cleanly)
    grace = GracePeriod(settings.shutdown_grace_seconds)
    app = create_app(settings, grace=grace, instance_lock=lock)
    tune_garbage_collector()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            access_log=settings.access_log,
            log_config=None,
            # HTTP requests in flight may use the grace period (uvicorn takes whole
            # seconds); the lifespan gives the delivery threads what is left of it.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            server_header=False,
        )
    )
    handle_exit = server.handle_exit

    def note_shutdown_start(sig: int, frame: FrameType | None) -> None:
        # One grace period from the signal to the exit, shared by the HTTP drain and
        # the deliveries in flight.
        grace.start()
        handle_exit(sig, frame)

    server.handle_exit = note_shutdown_start  # type: ignore[method-assign]
    # A hang-up (the terminal or session that started us went away) stops us as
    # SIGTERM does: gracefully, exit status 0. uvicorn handles only INT and TERM.
    signal.signal(signal.SIGHUP, lambda sig, frame: note_shutdown_start(signal.SIGTERM, frame))
    # Ctrl-C: uvicorn shuts down gracefully, then re-raises SIGINT as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt), sock:
        server.run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.command == "migrate":
        migrate()
    else:
        serve()


if __name__ == "__main__":
    main()
