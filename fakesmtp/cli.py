"""``python -m fakesmtp`` / ``fakesmtp``: run the fake relay until interrupted.

Once listening it prints one line a parent process can parse for the ports it
chose (``--port 0``, ``--http-port auto``)::

    fakesmtp SMTP on 127.0.0.1:1025 HTTP on http://127.0.0.1:8025
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import FrameType

from fakesmtp.certs import make_self_signed
from fakesmtp.faults import FaultRule, FaultSpecError
from fakesmtp.options import ServerOptions
from fakesmtp.policies import RateLimit
from fakesmtp.server import FakeSMTPServer

# The parser's own options; every other one is the ServerOptions field of the
# same name, so a new server option needs only its add() line in build_parser.
_CLI_ONLY = ("self_signed", "log_level", "fault")


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return user, password


def _fault(text: str) -> FaultRule:
    try:
        return FaultRule.parse(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> RateLimit:
    try:
        return RateLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    # [::1]:25, as in a URL, for an IPv6 address.
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT with a port 1-65535")
    return host, int(port)


def _http_port(text: str) -> int | None:
    if text == "auto":
        return 0
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a port number or 'auto'") from None
    return None if port == 0 else port


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fakesmtp",
        description="A fake SMTP relay that captures mail and fails on purpose.",
        epilog="Fault SPEC: STAGE:ACTION[:ARG[:MESSAGE]][;times=N][;match=REGEX][;p=P], "
        "e.g. 'rcpt:reply:451:4.7.1 Try later;times=2' or 'message:bounce:550;match=^nobody@' "
        "(with --bounce-relay). See docs/fakesmtp.md.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=1025, help="SMTP port, 0 picks a free one (default 1025)")
    add(
        "--http-port",
        type=_http_port,
        default=8025,
        help="HTTP API port; 0 turns it off, 'auto' picks a free one (default 8025)",
    )
    add("--tls-cert", help="PEM certificate: offer STARTTLS (or implicit TLS)")
    add("--tls-key", help="PEM private key for --tls-cert")
    add(
        "--self-signed",
        action="store_true",
        help="make a throwaway certificate for localhost (instead of --tls-cert/--tls-key)",
    )
    add("--implicit-tls", action="store_true", help="the SMTP port speaks TLS from the first byte")
    add("--require-tls", action="store_true", help="530 for mail before STARTTLS")
    add("--auth", type=_auth, metavar="USER:PASS", help="require AUTH PLAIN/LOGIN")
    add("--latency", type=_non_negative, default=0.0, help="seconds before every reply")
    add(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="a fault rule (repeatable; applied in order, the first that fires wins)",
    )
    add("--seed", type=int, help="seed for fault probabilities, to repeat a chaos run exactly")
    add("--max-messages", type=int, default=10000, help="messages kept, oldest dropped")
    add("--max-size", type=int, help="largest message in bytes; larger ones get 552")
    add("--greylist", type=_non_negative, metavar="SECONDS", help="greylist sender/recipient pairs")
    add("--rate-limit", type=_rate, metavar="N/PERIOD", help="token bucket, e.g. 100/s or 600/m")
    add(
        "--rate-limit-code",
        type=int,
        choices=(421, 451),
        default=451,
        help="reply over the rate limit (421 also closes the connection)",
    )
    add("--max-per-connection", type=int, metavar="N", help="421 and close after N messages")
    add("--blackhole", action="store_true", help="accept every message with 250, keep none")
    add(
        "--no-smtputf8",
        dest="smtputf8",
        action="store_false",
        help="do not offer SMTPUTF8 (as many relays), to test non-ASCII addresses",
    )
    add(
        "--no-pipelining",
        dest="pipelining",
        action="store_false",
        help="do not offer PIPELINING, to test a client's one-command-at-a-time path",
    )
    add(
        "--no-chunking",
        dest="chunking",
        action="store_false",
        help="do not offer CHUNKING (BDAT), to test a client's DATA path",
    )
    add(
        "--bounce-relay",
        type=_host_port,
        metavar="HOST:PORT",
        help="the SMTP server that bounce fault rules send their DSNs through",
    )
    add("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def server_options(args: argparse.Namespace, certs_dir: str) -> ServerOptions:
    """The parsed arguments as ServerOptions; ``--self-signed`` writes its pair to ``certs_dir``.

    A bad combination (``--implicit-tls`` without a certificate) is a ValueError.
    """
    values = {name: value for name, value in vars(args).items() if name not in _CLI_ONLY}
    if args.self_signed:
        values["tls_cert"], values["tls_key"] = make_self_signed(certs_dir)
    return ServerOptions(**values, faults=args.fault)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with tempfile.TemporaryDirectory(prefix="fakesmtp-") as tmp:
        try:
            options = server_options(args, tmp)
        except ValueError as exc:
            parser.error(str(exc))
        return _serve(FakeSMTPServer(options=options))


def _serve(server: FakeSMTPServer) -> int:
    """Run ``server`` until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except OSError as exc:
        print(f"fakesmtp: cannot listen: {exc}", file=sys.stderr)
        return 1
    http = f"HTTP on {server.http_url}" if server.http_url else "HTTP off"
    # The one documented line a parent process parses for the chosen ports.
    print(f"fakesmtp SMTP on {server.host}:{server.port} {http}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(raise_errors=False)
    print("fakesmtp stopped", flush=True)
    return 0
