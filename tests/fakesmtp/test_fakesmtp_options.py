"""ServerOptions: the one list of server options, checked once, handed to FakeSMTPServer."""

from __future__ import annotations

import dataclasses
import smtplib

import pytest

from fakesmtp import FakeSMTPServer, FaultRule, RateLimit, ServerOptions

pytestmark = pytest.mark.unit

RULE = FaultRule(stage="rcpt", code=451, times=1)


def test_the_first_twelve_options_go_by_position_the_rest_by_keyword() -> None:
    options = ServerOptions(
        2525, 8080, None, None, False, False, ("u", "p"), 0.5, [RULE], 7, 5, 1000, host="::1"
    )
    assert (options.port, options.http_port, options.auth, options.latency) == (
        2525, 8080, ("u", "p"), 0.5,
    )  # fmt: skip
    assert (options.faults, options.seed, options.max_messages, options.max_size) == (
        (RULE,), 7, 5, 1000,
    )  # fmt: skip
    assert options.host == "::1"
    with pytest.raises(TypeError):
        ServerOptions(0, None, None, None, False, False, None, 0.0, (), None, 1, None, "::1")  # type: ignore[call-arg]


def test_the_server_takes_the_same_arguments() -> None:
    server = FakeSMTPServer(0, None, None, None, False, False, None, 0.0, [RULE], 3, greylist=1.0)
    assert server.options == ServerOptions(faults=[RULE], seed=3, greylist=1.0)


def test_a_rate_limit_string_is_parsed_at_construction() -> None:
    assert ServerOptions(rate_limit="10/m").limit == RateLimit(10, 60.0)
    assert ServerOptions(rate_limit=RateLimit(3, 1.0)).limit == RateLimit(3, 1.0)
    assert ServerOptions().limit is None
    with pytest.raises(ValueError, match="rate limit"):
        ServerOptions(rate_limit="fast")


def test_fault_rules_from_a_generator_are_kept() -> None:
    options = ServerOptions(faults=(rule for rule in [RULE]))
    assert options.faults == (RULE,)
    assert options.faults == (RULE,)


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerOptions().port = 1  # type: ignore[misc]


def test_a_server_built_from_options_uses_them() -> None:
    options = ServerOptions(faults=[RULE])
    with FakeSMTPServer(options=options) as server:
        assert server.options is options
        with smtplib.SMTP(server.host, server.port, timeout=5) as client:
            client.ehlo()
            client.mail("s@example.com")
            assert client.rcpt("r@example.com")[0] == 451
            assert client.rcpt("r@example.com")[0] == 250


def test_options_and_their_arguments_together_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        FakeSMTPServer(port=0, options=ServerOptions())
