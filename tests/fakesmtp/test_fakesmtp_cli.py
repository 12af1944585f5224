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
from fakesmtp_helpers import make_message

from fakesmtp.cli import build_parser

pytestmark = pytest.mark.fakesmtp

READY = re.compile(
    r"^fakesmtp SMTP on (?P<host>[\d.]+):(?P<port>\d+) (?:HTTP on (?P<http>http://\S+)|HTTP off)$"
)


class CLIProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fakesmtp", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
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
    result = subprocess.run(
        [sys.executable, "-m", "fakesmtp", "--fault", "rcpt:explode"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "--fault" in result.stderr
    assert "action" in result.stderr


def test_cli_reports_a_port_in_use(cli: list[CLIProcess]) -> None:
    first = CLIProcess("--http-port", "0")
    cli.append(first)
    result = subprocess.run(
        [sys.executable, "-m", "fakesmtp", "--port", str(first.port), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
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
