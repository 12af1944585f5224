"""Fault rules at every stage, with every action, over real SMTP connections."""

from __future__ import annotations

import base64
import smtplib
import time
from typing import Any, cast

import pytest

from fakesmtp import FakeSMTPServer, FaultRule, FaultSpecError, replies
from fakesmtp.faults import STAGES
from tests.fakesmtp.helpers import make_message

pytestmark = pytest.mark.unit

# What each stage answers when nothing goes wrong.
NORMAL_CODE = {
    "connect": 220,
    "ehlo": 250,
    "auth": 235,
    "mail": 250,
    "rcpt": 250,
    "data": 354,
    "message": 250,
}


def dialogue_until(server: FakeSMTPServer, stage: str) -> tuple[int, bytes]:
    """Run a dialogue up to ``stage`` and return that stage's reply.

    Earlier stages must succeed; smtplib's exceptions for a refused stage are
    turned back into the reply they carry.
    """
    client = smtplib.SMTP(timeout=5)
    try:
        try:
            reply = client.connect(server.host, server.port)
        except smtplib.SMTPConnectError as exc:
            return exc.smtp_code, cast(bytes, exc.smtp_error)
        if stage == "connect":
            return reply
        reply = client.ehlo()
        if stage == "ehlo":
            return reply
        assert reply[0] == 250
        if stage == "auth":
            # One AUTH command: smtplib's login() would try every mechanism in turn.
            return client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0user\0secret").decode())
        reply = client.mail("sender@example.com")
        if stage == "mail":
            return reply
        assert reply[0] == 250
        reply = client.rcpt("rcpt@example.com")
        if stage == "rcpt":
            return reply
        assert reply[0] == 250
        client.putcmd("data")
        reply = client.getreply()
        if stage == "data":
            return reply
        assert reply[0] == 354
        client.send(make_message() + b".\r\n")
        return client.getreply()
    finally:
        client.close()


@pytest.mark.parametrize("stage", STAGES)
def test_reply_fault_answers_its_code_at_its_stage(fakesmtp: FakeSMTPServer, stage: str) -> None:
    fakesmtp.add_fault(FaultRule(stage=stage, action="reply", code=451, message="4.7.1 Try later"))
    code, text = dialogue_until(fakesmtp, stage)
    assert (code, text) == (451, b"4.7.1 Try later")
    assert fakesmtp.messages() == []
    assert fakesmtp.stats()["faults_fired"] == 1


@pytest.mark.parametrize("stage", STAGES)
def test_disconnect_fault_drops_the_connection_without_a_reply(
    fakesmtp: FakeSMTPServer, stage: str
) -> None:
    fakesmtp.add_fault(FaultRule(stage=stage, action="disconnect", times=1))
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        dialogue_until(fakesmtp, stage)
    assert fakesmtp.messages() == []
    # The server itself carries on: the next client is served normally.
    assert dialogue_until(fakesmtp, "message")[0] == 250


@pytest.mark.parametrize("stage", STAGES)
def test_delay_fault_waits_then_answers_normally(fakesmtp: FakeSMTPServer, stage: str) -> None:
    fakesmtp.add_fault(FaultRule(stage=stage, action="delay", delay=0.3, times=1))
    started = time.monotonic()
    code, _ = dialogue_until(fakesmtp, stage)
    elapsed = time.monotonic() - started
    assert code == NORMAL_CODE[stage]
    assert elapsed >= 0.3
    # times=1: the rule has expired and does not fire on the next dialogue
    # (counted, not timed: a loaded machine can take 0.3 s on its own).
    assert fakesmtp.faults() == []
    assert dialogue_until(fakesmtp, stage)[0] == NORMAL_CODE[stage]
    assert fakesmtp.stats()["faults_fired"] == 1


def test_reply_fault_with_only_a_code_uses_the_catalogue_text(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="mail", code=550))
    assert dialogue_until(fakesmtp, "mail") == (550, replies.DEFAULT_FAULT_TEXT[550].encode())


def test_421_reply_closes_the_connection(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="mail", code=421))
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.ehlo()
        assert client.mail("s@example.com")[0] == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_times_expires_a_rule_after_that_many_firings(fakesmtp: FakeSMTPServer) -> None:
    rule_id = fakesmtp.add_fault(FaultRule(stage="rcpt", code=451, times=2))
    assert fakesmtp.fault(rule_id) is not None
    codes = [dialogue_until(fakesmtp, "rcpt")[0] for _ in range(3)]
    assert codes == [451, 451, 250]
    assert fakesmtp.fault(rule_id) is None


def test_match_picks_recipients_by_regex(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=550, match=r"@bad\.example$"))
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        client.ehlo()
        client.mail("s@example.com")
        assert client.rcpt("ok@good.example")[0] == 250
        assert client.rcpt("no@bad.example")[0] == 550
        assert client.data(make_message())[0] == 250
    [message] = fakesmtp.messages()
    assert message.rcpt_tos == ["ok@good.example"]


def test_match_on_sender_applies_at_message_stage(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="message", code=554, match=r"^spammer@"))
    with smtplib.SMTP(fakesmtp.host, fakesmtp.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("spammer@example.com", ["r@example.com"], make_message("spam"))
        client.sendmail("friend@example.com", ["r@example.com"], make_message("ham"))
    assert [m.subject for m in fakesmtp.messages()] == ["ham"]


def test_rule_with_match_never_fires_before_an_address_is_known(
    fakesmtp: FakeSMTPServer,
) -> None:
    fakesmtp.add_fault(FaultRule(stage="ehlo", code=554, match="."))
    assert dialogue_until(fakesmtp, "ehlo")[0] == 250


def test_rules_apply_in_order_and_the_first_that_fires_wins(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="mail", code=452, times=1))
    fakesmtp.add_fault(FaultRule(stage="mail", code=451))
    assert dialogue_until(fakesmtp, "mail")[0] == 452
    assert dialogue_until(fakesmtp, "mail")[0] == 451


def test_a_2xx_reply_at_message_stage_still_keeps_the_message(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="message", code=250, message="2.0.0 custom"))
    assert dialogue_until(fakesmtp, "message") == (250, b"2.0.0 custom")
    assert len(fakesmtp.messages()) == 1


def _outcomes(seed: int) -> list[int]:
    rule = FaultRule(stage="rcpt", code=451, probability=0.5)
    with (
        FakeSMTPServer(seed=seed, faults=[rule]) as server,
        smtplib.SMTP(server.host, server.port, timeout=5) as client,
    ):
        client.ehlo()
        client.mail("s@example.com")
        return [client.rcpt(f"r{n}@example.com")[0] for n in range(40)]


def test_probability_with_a_seed_repeats_exactly() -> None:
    first, second = _outcomes(seed=7), _outcomes(seed=7)
    assert first == second
    assert set(first) == {250, 451}  # both outcomes occur at p=0.5 over 40 draws
    assert _outcomes(seed=8) != first


def test_probability_zero_never_fires(fakesmtp: FakeSMTPServer) -> None:
    fakesmtp.add_fault(FaultRule(stage="mail", code=451, probability=0.0))
    assert dialogue_until(fakesmtp, "mail")[0] == 250


def test_remove_and_clear_faults(fakesmtp: FakeSMTPServer) -> None:
    first = fakesmtp.add_fault(FaultRule(stage="mail", code=451))
    fakesmtp.add_fault(FaultRule(stage="rcpt", code=451))
    assert fakesmtp.remove_fault(first) is True
    assert fakesmtp.remove_fault(first) is False
    assert [f["stage"] for f in fakesmtp.faults()] == ["rcpt"]
    assert dialogue_until(fakesmtp, "mail")[0] == 250
    fakesmtp.clear_faults()
    assert fakesmtp.faults() == []
    assert dialogue_until(fakesmtp, "rcpt")[0] == 250


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"stage": "helo"}, "stage"),
        ({"stage": "mail", "action": "explode"}, "action"),
        ({"stage": "mail"}, "integer code"),
        ({"stage": "mail", "code": 199}, "between 200 and 599"),
        ({"stage": "mail", "code": 451, "message": "a\r\nb"}, "one line"),
        ({"stage": "mail", "action": "delay"}, "delay > 0"),
        ({"stage": "mail", "action": "delay", "delay": -1}, "non-negative"),
        ({"stage": "mail", "action": "disconnect", "match": "("}, "regular expression"),
        ({"stage": "mail", "action": "disconnect", "times": 0}, "times"),
        ({"stage": "mail", "action": "disconnect", "probability": 1.5}, "probability"),
    ],
)
def test_invalid_rules_are_refused(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(FaultSpecError, match=error):
        FaultRule(**kwargs)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            r"rcpt:reply:451:4.7.1 Try later;times=2;match=@bad\.com$;p=0.5",
            FaultRule(
                "rcpt",
                "reply",
                451,
                "4.7.1 Try later",
                match=r"@bad\.com$",
                times=2,
                probability=0.5,
            ),
        ),
        ("message:disconnect", FaultRule("message", "disconnect")),
        (
            "DATA:delay:2.5;probability=0.25",
            FaultRule("data", "delay", delay=2.5, probability=0.25),
        ),
        ("mail:reply:550", FaultRule("mail", "reply", 550)),
        (r"mail:reply:451:a\; b;match=x\;y", FaultRule("mail", "reply", 451, "a; b", match="x;y")),
        (
            "connect:reply:554:5.7.1 Go away: now",
            FaultRule("connect", "reply", 554, "5.7.1 Go away: now"),
        ),
    ],
)
def test_fault_spec_syntax_parses(spec: str, expected: FaultRule) -> None:
    assert FaultRule.parse(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "rcpt",
        "rcpt:reply",
        "rcpt:reply:abc",
        "rcpt:disconnect:5",
        "rcpt:delay:soon",
        "rcpt:reply:451;times=x",
        "rcpt:reply:451;colour=red",
        "rcpt:reply:451;times",
    ],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultRule.parse(spec)


def test_rule_round_trips_through_its_dict() -> None:
    rule = FaultRule("rcpt", "reply", 451, "x", match="a", times=3, probability=0.5)
    assert FaultRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(FaultSpecError, match="unknown field"):
        FaultRule.from_dict({"stage": "rcpt", "code": 451, "colour": "red"})
    with pytest.raises(FaultSpecError, match="stage is required"):
        FaultRule.from_dict({"code": 451})
