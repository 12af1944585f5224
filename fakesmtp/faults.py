"""Fault rules: what to break, where, how often, and the compact ``--fault`` syntax."""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fakesmtp import replies

STAGES = ("connect", "ehlo", "auth", "mail", "rcpt", "data", "message")
ACTIONS = ("reply", "disconnect", "delay", "bounce")

#: The code a bounce rule reports when it names none, as a mailbox that does not exist.
DEFAULT_BOUNCE_CODE = 550


class FaultSpecError(ValueError):
    """A fault rule or ``--fault`` SPEC that does not describe a valid rule."""


@dataclass(frozen=True)
class FaultRule:
    """One way to misbehave at one stage of the SMTP dialogue.

    ``stage``: connect, ehlo, auth, mail, rcpt, data (the reply to the DATA
    command) or message (the reply after the final dot). ``action``: reply
    (answer ``code`` and ``message`` instead of the normal reply), disconnect
    (drop the connection without a word), delay (wait ``delay`` seconds, then
    carry on normally) or bounce (stage message only: accept the message, then
    send its sender a delivery status notification with ``code`` and
    ``message``, 550 by default; a 4xx reports a delay, a 5xx a failure).
    ``match`` is a regular expression searched in the sender or any recipient;
    a bounce rule searches the recipients only, and bounces those it finds
    (all of them without ``match``). A rule with ``match`` never fires at
    connect, ehlo or auth, where no address is known yet. ``times`` is how
    often the rule fires before it expires (None: for ever); ``probability``
    is the chance it fires when it applies, drawn from the server's seeded RNG.
    """

    stage: str
    action: str = "reply"
    code: int | None = None
    message: str | None = None
    delay: float = 0.0
    match: str | None = None
    times: int | None = None
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise FaultSpecError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.action not in ACTIONS:
            raise FaultSpecError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if self.action == "reply":
            if not isinstance(self.code, int) or isinstance(self.code, bool):
                raise FaultSpecError("a reply rule needs an integer code")
            if not 200 <= self.code <= 599:
                raise FaultSpecError(f"code must be between 200 and 599, not {self.code}")
        if self.action == "bounce":
            self._check_bounce()
        if self.message is not None and ("\r" in self.message or "\n" in self.message):
            raise FaultSpecError("message must be one line")
        if (
            isinstance(self.delay, bool)
            or not isinstance(self.delay, int | float)
            or not math.isfinite(self.delay)
            or self.delay < 0
        ):
            raise FaultSpecError("delay must be a non-negative number of seconds")
        if self.action == "delay" and self.delay <= 0:
            raise FaultSpecError("a delay rule needs delay > 0")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise FaultSpecError(f"match is not a valid regular expression: {exc}") from exc
        if self.times is not None and (
            not isinstance(self.times, int) or isinstance(self.times, bool) or self.times < 1
        ):
            raise FaultSpecError("times must be a positive integer or null")
        if (
            isinstance(self.probability, bool)
            or not isinstance(self.probability, int | float)
            or not 0.0 <= self.probability <= 1.0
        ):
            raise FaultSpecError("probability must be between 0 and 1")

    def _check_bounce(self) -> None:
        if self.stage != "message":
            # Only after the final dot is there a message to accept and then bounce.
            raise FaultSpecError(
                f"a bounce rule belongs to stage message (after the final dot), not {self.stage!r}"
            )
        if self.code is None:
            object.__setattr__(self, "code", DEFAULT_BOUNCE_CODE)
        if (
            not isinstance(self.code, int)
            or isinstance(self.code, bool)
            or not 400 <= self.code <= 599
        ):
            raise FaultSpecError(f"a bounce needs a 4xx or 5xx code, not {self.code!r}")

    @property
    def text(self) -> str:
        """The text after the code: the rule's ``message``, else the catalogue's."""
        assert self.code is not None
        return self.message if self.message else replies.default_fault_text(self.code)

    @property
    def reply_line(self) -> str:
        """The reply a ``reply`` rule sends."""
        return f"{self.code} {self.text}"

    def bounced(self, recipients: Iterable[str]) -> list[str]:
        """The recipients a bounce rule bounces: those ``match`` finds, all without one."""
        if self.match is None:
            return list(recipients)
        return [r for r in recipients if re.search(self.match, r)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "action": self.action,
            "code": self.code,
            "message": self.message,
            "delay": self.delay,
            "match": self.match,
            "times": self.times,
            "probability": self.probability,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from JSON; unknown keys are an error so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise FaultSpecError("a fault rule is a JSON object")
        known = {"stage", "action", "code", "message", "delay", "match", "times", "probability"}
        unknown = set(data) - known
        if unknown:
            raise FaultSpecError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "stage" not in data:
            raise FaultSpecError("stage is required")
        delay = data.get("delay")
        probability = data.get("probability")
        return cls(
            stage=data["stage"],
            action=data.get("action", "reply"),
            code=data.get("code"),
            message=data.get("message"),
            delay=0.0 if delay is None else delay,
            match=data.get("match"),
            times=data.get("times"),
            probability=1.0 if probability is None else probability,
        )

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """Parse the compact ``--fault`` syntax.

        ``STAGE:ACTION[:ARG[:MESSAGE]][;OPTION=VALUE]...`` where ARG is the
        code for ``reply`` and ``bounce`` (optional for a bounce: 550) and the
        seconds for ``delay``; options are ``times=N``, ``match=REGEX`` and
        ``p=P`` (or ``probability=P``). A literal ``;`` inside the message or
        the regex is written ``\\;``. Examples:

        - ``rcpt:reply:451:4.7.1 Try later;times=2``
        - ``message:disconnect;p=0.1``
        - ``data:delay:2.5;match=@slow\\.example$``
        - ``message:bounce:550:5.1.1 No such user;match=^nobody@``
        """
        parts = [p.replace("\\;", ";") for p in re.split(r"(?<!\\);", spec)]
        head, options = parts[0], parts[1:]
        fields = head.split(":", 3)
        if len(fields) < 2:
            raise FaultSpecError(f"{spec!r}: expected STAGE:ACTION[:ARG[:MESSAGE]]")
        stage, action = fields[0].strip().lower(), fields[1].strip().lower()
        kwargs: dict[str, Any] = {"stage": stage, "action": action}
        arg = fields[2].strip() if len(fields) > 2 else ""
        if action in ("reply", "bounce"):
            # A bounce may leave its code out (550 then); a reply may not.
            if arg or action == "reply":
                if not arg.isdigit():
                    raise FaultSpecError(f"{spec!r}: a {action} needs a numeric code")
                kwargs["code"] = int(arg)
            if len(fields) > 3 and fields[3].strip():
                kwargs["message"] = fields[3].strip()
        elif action == "delay":
            kwargs["delay"] = _number(spec, "delay", arg)
        elif arg:
            raise FaultSpecError(f"{spec!r}: {action} takes no argument")
        for option in options:
            if not option.strip():
                continue
            key, sep, value = option.partition("=")
            key = key.strip().lower()
            if not sep:
                raise FaultSpecError(f"{spec!r}: option {option!r} is not KEY=VALUE")
            if key == "times":
                if not value.strip().isdigit():
                    raise FaultSpecError(f"{spec!r}: times must be a positive integer")
                kwargs["times"] = int(value)
            elif key == "match":
                kwargs["match"] = value
            elif key in ("p", "probability"):
                kwargs["probability"] = _number(spec, "probability", value)
            else:
                raise FaultSpecError(f"{spec!r}: unknown option {key!r}")
        return cls(**kwargs)


def _number(spec: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"{spec!r}: {name} must be a number, not {text!r}") from None
    return value


@dataclass
class ActiveRule:
    """A rule in force on a server: its id, what is left of ``times``, how often it fired."""

    id: str
    rule: FaultRule
    remaining: int | None
    fired: int = 0
    pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.rule.to_dict(),
            "remaining": self.remaining,
            "fired": self.fired,
        }


class FaultSet:
    """The ordered rules of one server. Thread-safe: the HTTP API and tests edit it live.

    ``pick`` is called on the event loop for every stage of every message, so
    the common case (no rules) returns before taking the lock.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rules: list[ActiveRule] = []
        self._lock = threading.Lock()
        self._rng = rng
        self._next_id = 1

    def __bool__(self) -> bool:
        return bool(self._rules)

    def add(self, rule: FaultRule) -> str:
        with self._lock:
            rule_id = str(self._next_id)
            self._next_id += 1
            pattern = re.compile(rule.match) if rule.match is not None else None
            self._rules.append(ActiveRule(rule_id, rule, rule.times, pattern=pattern))
            return rule_id

    def get(self, rule_id: str) -> ActiveRule | None:
        with self._lock:
            return next((active for active in self._rules if active.id == rule_id), None)

    def remove(self, rule_id: str) -> bool:
        with self._lock:
            for index, active in enumerate(self._rules):
                if active.id == rule_id:
                    del self._rules[index]
                    return True
            return False

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [active.to_dict() for active in self._rules]

    def pick(
        self, stage: str, addresses: Iterable[str] = (), recipients: Sequence[str] = ()
    ) -> FaultRule | None:
        """The first rule for ``stage`` that fires now, or None. Expires used-up rules.

        ``addresses`` are what ``match`` is searched in; a bounce rule searches
        ``recipients`` only, since its ``match`` chooses who bounces.
        """
        if not self._rules:
            return None
        candidates = None
        with self._lock:
            for index, active in enumerate(self._rules):
                rule = active.rule
                if rule.stage != stage:
                    continue
                if active.pattern is not None:
                    if candidates is None:
                        candidates = [a for a in addresses if a]
                    searched = recipients if rule.action == "bounce" else candidates
                    if not any(active.pattern.search(a) for a in searched):
                        continue
                # Draw only for rules that apply, so a seeded run repeats exactly
                # whatever other traffic the rules ignore.
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                active.fired += 1
                if active.remaining is not None:
                    active.remaining -= 1
                    if active.remaining <= 0:
                        del self._rules[index]
                return rule
        return None
