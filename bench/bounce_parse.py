"""Bounce parsing: bounces parsed a minute by parse_bounce on one core, against the email
package reading the same bounces alone, same run (target: >= 10,000 a minute).

    python bench/bounce_parse.py --seconds 5 --rounds 2

The mix, parsed in turn over and over: the real-world shaped samples of
tests/bounces/samples (RFC 3464 reports from Postfix and Sendmail, a global one with
UTF-8, and Exim, qmail and Gmail bounces that flufl.bounce recognises, a report whose
delivery-status part is garbage), a Postfix report that returns the whole message
(40 KB with its attachment), and malformed mail: a report cut in half, an empty
mail, random bytes, and an out-of-office reply (no bounce at all, so every one of
flufl.bounce's detectors runs on it). The baseline is
`email.message_from_bytes(raw, policy=email.policy.default)` on the same mix: the
unavoidable cost of reading a message. The process is pinned to one CPU; each side
runs --seconds per round, and the best round of each counts.
"""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser
from service.bounces import parse_bounce

TARGET_PER_MINUTE = 10_000.0
SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "bounces" / "samples"

OUT_OF_OFFICE = b"""\
From: Ana Lopez <ana@example.org>
To: bounces+0192a4c6e1f07c3d9a8b2e4f6a1c3e5b@mail.example.com
Subject: Out of office: Your order has shipped
Auto-Submitted: auto-replied
Date: Tue, 01 Dec 2026 10:00:07 +0000
Message-ID: <ooo-20261201100007@example.org>
Content-Type: text/plain; charset=utf-8

Hello,

I am out of the office until Monday 7 December, with no access to my mail.
For anything urgent, please write to team@example.org.

Best regards,
Ana
"""


def with_returned_message(report: bytes) -> bytes:
    """`report` returning the whole message (a 30 KB PDF attached) instead of its headers."""
    pdf = base64.encodebytes(random.Random(3).randbytes(30_000)).decode()
    returned = (
        "Return-Path: <bounces+0192a4c6e1f07c3d9a8b2e4f6a1c3e5b@mail.example.com>\n"
        "From: Shop <shop@example.com>\nTo: nobody@example.org\nSubject: Your invoice\n"
        "Message-ID: <0192a4c6e1f07c3d9a8b2e4f6a1c3e5b@example.com>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="inner"\n\n'
        "--inner\nContent-Type: text/plain; charset=utf-8\n\n"
        + "Please find your invoice attached.\n"
        * 20
        + '\n--inner\nContent-Type: application/pdf; name="invoice.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n" + pdf + "--inner--\n"
    ).encode()
    headers_part = report.index(b"Content-Description: Undelivered Message Headers")
    return (
        report[:headers_part]
        + b"Content-Description: Undelivered Message\nContent-Type: message/rfc822\n\n"
        + returned
        + b"\n--4XyZ1a2B3c.1796119205/mx.example.org--\n"
    )


def bounce_mix() -> dict[str, bytes]:
    mix = {path.stem: path.read_bytes() for path in sorted(SAMPLES.glob("*.eml"))}
    postfix = mix["postfix_failed"]
    mix["postfix_failed_whole_message"] = with_returned_message(postfix)
    mix["cut_in_half"] = postfix[: len(postfix) // 2]
    mix["empty"] = b""
    mix["random_bytes"] = random.Random(7).randbytes(2048)
    mix["out_of_office"] = OUT_OF_OFFICE
    return mix


def baseline(raw: bytes) -> object:
    return email.message_from_bytes(raw, policy=email.policy.default)


def per_minute(parse: Callable[[bytes], object], mix: list[bytes], seconds: float) -> float:
    """How many of `mix`, parsed in turn, `parse` gets through in a minute (measured over
    `seconds`)."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for raw in mix:
            parse(raw)
        count += len(mix)
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started) * 60


def microseconds_each(parse: Callable[[bytes], object], raw: bytes, number: int = 200) -> float:
    started = time.perf_counter()
    for _ in range(number):
        parse(raw)
    return (time.perf_counter() - started) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per side per round")
    args = p.parse_args(argv)
    # The numbers are for one core, and for parsing: flufl.bounce logs every detector it
    # runs at INFO, which the service turns off.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    logging.disable(logging.CRITICAL)
    result = Result.begin(
        "bounce_parse",
        "bounces parsed a minute, one core",
        f">= {TARGET_PER_MINUTE:,.0f} a minute (ratio is parse_bounce / the email package "
        "alone, for information)",
    )
    mix = bounce_mix()
    formats = Counter(parse_bounce(raw).format for raw in mix.values())
    service_rates: list[float] = []
    baseline_rates: list[float] = []
    for round_no in range(args.rounds):
        sides = [("baseline", baseline, baseline_rates), ("service", parse_bounce, service_rates)]
        for _, parse, rates in sides if round_no % 2 == 0 else reversed(sides):
            rates.append(per_minute(parse, list(mix.values()), args.seconds))
        result.rounds.append(
            {"service_per_minute": service_rates[-1], "baseline_per_minute": baseline_rates[-1]}
        )
        print(
            f"round {round_no}: parse_bounce {service_rates[-1]:,.0f}/min, "
            f"email package alone {baseline_rates[-1]:,.0f}/min",
            flush=True,
        )
    result.value, result.baseline = max(service_rates), max(baseline_rates)
    result.ratio = result.value / result.baseline
    result.ok = result.value >= TARGET_PER_MINUTE
    result.notes.append(
        f"median parse_bounce {median(service_rates):,.0f}/min, email package "
        f"{median(baseline_rates):,.0f}/min; a mix of {len(mix)} bounces: "
        + ", ".join(f"{n} {name}" for name, n in sorted(formats.items()))
    )
    for name, raw in mix.items():
        ours, theirs = microseconds_each(parse_bounce, raw), microseconds_each(baseline, raw)
        result.notes.append(
            f"{name} ({len(raw):,} bytes, {parse_bounce(raw).format}): {ours:,.0f} us, "
            f"email package {theirs:,.0f} us"
        )
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
