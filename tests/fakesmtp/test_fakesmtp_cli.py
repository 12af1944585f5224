"""``python -m fakesmtp`` started as a real subprocess."""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakesmtp import RateLimit, ServerOptions
from fakesmtp.cli import build_parser, server_options
from tests.fakesmtp.helpers import make_message

pytestmark = pytest.mark.e2e

READY = re.compile(
    r"^fakesmtp SMTP on (?P<host>[\d.]+):(?P<port>\d+) (?:HTTP on (?P<http>http://\S+)|HTTP off)$"
)
FAKESMTP = [sys.executable, "-m", "fakesmtp"]
REPO = Path(__file__).resolve().parents[2]


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fakesmtp`` with ``args`` to an exit it should reach on its own."""
    return subprocess.run(
        [*FAKESMTP, *args], capture_output=True, text=True, timeout=30, check=False, cwd=REPO
    )


class CLIProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*FAKESMTP, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = READY.match(line)
        if match is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"no ready line, got {line!r}; stderr: {err}")
        self.host = match["host"]
        self.port = int(match["port"])
        self.http_url = match["http"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        return self.proc.returncode


@pytest.fixture
def cli() -> Iterator[list[CLIProcess]]:
    started: list[CLIProcess] = []
    yield started
    for process in started:
        process.stop()


def test_cli_prints_its_ports_serves_smtp_and_http_and_stops_on_sigterm(
    cli: list[CLIProcess],
) -> None:
    process = CLIProcess("--http-port", "auto", "--fault", "rcpt:reply:451:4.7.1 Later;times=1")
    cli.append(process)
    assert process.http_url is not None
    with smtplib.SMTP(process.host, process.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        assert client.rcpt("r@example.com") == (451, b"4.7.1 Later")
        assert client.rcpt("r@example.com")[0] == 250
        assert client.data(make_message("from the cli"))[0] == 250
    body = httpx.get(f"{process.http_url}/api/messages", timeout=5).json()
    assert [m["subject"] for m in body["messages"]] == ["from the cli"]
    assert process.stop() == 0


def test_cli_http_port_zero_turns_the_api_off(cli: list[CLIProcess]) -> None:
    process = CLIProcess("--http-port", "0", "--auth", "u:p", "--max-size", "1000")
    cli.append(process)
    assert process.http_url is None
    with smtplib.SMTP(process.host, process.port, timeout=5) as client:
        client.ehlo()
        assert client.mail("s@example.com")[0] == 530
        client.login("u", "p")
        assert client.mail("s@example.com", ["SIZE=5000"])[0] == 552


def test_cli_self_signed_offers_starttls(cli: list[CLIProcess]) -> None:
    process = CLIProcess("--http-port", "0", "--self-signed", "--require-tls")
    cli.append(process)
    with smtplib.SMTP(process.host, process.port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.mail("s@example.com")[0] == 530


def test_cli_refuses_a_bad_fault_spec_with_a_clear_message() -> None:
    result = run_to_exit("--fault", "rcpt:explode")
    assert result.returncode == 2
    assert "--fault" in result.stderr
    assert "action" in result.stderr


def test_cli_reports_a_port_in_use(cli: list[CLIProcess]) -> None:
    first = CLIProcess("--http-port", "0")
    cli.append(first)
    result = run_to_exit("--port", str(first.port), "--http-port", "0")
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "nocolon"], "USER:PASS"),
        (["--http-port", "eighty"], "auto"),
        (["--rate-limit", "fast"], "rate limit"),
        (["--latency", "-1"], "negative"),
        (["--implicit-tls"], "implicit_tls"),
    ],
)
def test_cli_option_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakesmtp.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_options_map_onto_the_server() -> None:
    args = build_parser().parse_args(
        ["--http-port", "auto", "--rate-limit", "10/m", "--greylist", "5", "--blackhole",
         "--max-per-connection", "3", "--seed", "4", "--fault", "message:disconnect;p=0.1"]
    )  # fmt: skip
    assert args.http_port == 0
    assert args.rate_limit.count == 10
    assert args.greylist == 5.0
    assert args.blackhole is True
    assert args.max_per_connection == 3
    assert args.fault[0].probability == 0.1


def test_cli_defaults_are_the_documented_server_options(tmp_path: Path) -> None:
    options = server_options(build_parser().parse_args([]), str(tmp_path))
    assert options == ServerOptions(port=1025, http_port=8025)


def test_cli_arguments_become_one_server_options(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--host", "::1", "--port", "0", "--http-port", "auto", "--self-signed", "--require-tls",
         "--rate-limit", "10/m", "--rate-limit-code", "421", "--max-per-connection", "3",
         "--fault", "rcpt:reply:451", "--fault", "message:disconnect", "--no-smtputf8",
         "--no-pipelining"]
    )  # fmt: skip
    options = server_options(args, str(tmp_path))
    assert (options.host, options.port, options.http_port) == ("::1", 0, 0)
    assert options.tls_cert is not None
    assert options.tls_key is not None
    assert Path(options.tls_cert).parent == tmp_path
    assert options.require_tls is True
    assert options.limit == RateLimit(10, 60.0)
    assert options.rate_limit_code == 421
    assert options.max_per_connection == 3
    assert [rule.stage for rule in options.faults] == ["rcpt", "message"]
    assert options.smtputf8 is False
    assert options.pipelining is False
