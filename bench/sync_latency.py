"""Sync latency: p50/p99 of POST /send vs a naive smtplib client, with and without STARTTLS.

    python bench/sync_latency.py --seconds 8 --rounds 2

Without TLS the relay is Postfix's smtp-sink (C), so that neither side is bounded
by a Python relay; with STARTTLS, which smtp-sink does not offer, it is fakesmtp
as a subprocess with a self-signed certificate for 127.0.0.1
(fakesmtp.certs.make_self_signed) and --require-tls, and the service trusts it
through SMTP_CA_FILE with SMTP_SECURITY=starttls. One client sends one
request at a time for --seconds (the latency of a lone caller, not of a queue):

- service: POST /send over one keep-alive HTTP connection (bench/httpload.py);
  the service validates, renders, stores, sends over its pooled SMTP connection
  and records, then answers 200;
- baseline: plain smtplib doing what a naive client does per message: connect,
  EHLO, STARTTLS, EHLO, send, QUIT (without TLS: connect, EHLO, send, QUIT).

Targets: p50(service) / p50(baseline) <= 1.5 without TLS (an HTTP request, two
small commits and one transaction on a pooled connection against a bare
connect-send-quit), <= 0.5 with STARTTLS (reusing a TLS session against a
handshake per message).
"""

from __future__ import annotations

import os
import smtplib
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, parser, request_cycle, send_body, workdir
from bench.httpload import run_load
from bench.postfix import SMTP_SINK, SmtpSink, missing
from bench.procs import FakeSMTP, Service
from fakesmtp.certs import make_self_signed

TARGET_PLAIN = 1.5
TARGET_TLS = 0.5


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def naive_client(port: int, cafile: Path | None, seconds: float) -> list[float]:
    """One fresh connection per message: the latencies, in seconds."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        message = (
            f"From: bench@example.com\r\nTo: user{n}@example.com\r\n"
            f"Subject: benchmark message {n}\r\nMessage-ID: <naive-{n}@bench>\r\n\r\n"
        ).encode() + send_body(n)
        started = time.perf_counter()
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        client.ehlo()
        if context is not None:
            client.starttls(context=context)
            client.ehlo()
        client.sendmail("bench@example.com", [f"user{n}@example.com"], message)
        client.quit()
        latencies.append(time.perf_counter() - started)
    return latencies


def service_client(service: Service, seconds: float) -> list[float]:
    requests = request_cycle("127.0.0.1", service.port, "/send", service.api_key)
    result = run_load(
        "127.0.0.1",
        service.port,
        lambda n: requests[n % len(requests)],
        connections=1,
        seconds=seconds,
    )
    if set(result.statuses) != {200}:
        raise RuntimeError(f"/send answered {dict(result.statuses)}")
    return result.latencies


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    if problem := missing(SMTP_SINK):
        print(problem)
        return 2
    result = Result.begin(
        "sync_latency",
        "p50 of /send vs naive smtplib with STARTTLS (fakesmtp), ms",
        f"<= {TARGET_TLS}, and without TLS (smtp-sink) <= {TARGET_PLAIN}",
    )
    with workdir("bench-sync-", args.keep) as (tmp, logs):
        cert, key = make_self_signed(Path(tmp))
        summary: dict[str, dict[str, list[float]]] = {}
        for variant in ("starttls", "none"):
            tls = variant == "starttls"
            fake_args = ["--http-port", "0", "--max-messages", "1000"]
            if tls:
                fake_args += ["--tls-cert", str(cert), "--tls-key", str(key), "--require-tls"]
            relay = (
                FakeSMTP(logs, fake_args, name=f"fakesmtp-{variant}")
                if tls
                else SmtpSink(logs, name="smtp-sink-sync")
            )
            with relay as fake:
                env = {
                    "SMTP_HOST": "127.0.0.1",
                    "SMTP_PORT": str(fake.port),
                    "SMTP_SECURITY": variant,
                }
                if tls:
                    env["SMTP_CA_FILE"] = str(cert)
                with Service(
                    logs, Path(tmp) / f"{variant}.db", env, name=f"service-{variant}"
                ) as svc:
                    service_client(svc, 1.0)  # warm up: the pooled connection, the code paths
                    naive_client(fake.port, Path(cert) if tls else None, 1.0)
                    stats = summary.setdefault(
                        variant,
                        {"service_p50": [], "service_p99": [], "naive_p50": [], "naive_p99": []},
                    )
                    for round_no in range(args.rounds):
                        s = service_client(svc, args.seconds)
                        b = naive_client(fake.port, Path(cert) if tls else None, args.seconds)
                        row = {
                            "service_p50_ms": percentile(s, 50) * 1000,
                            "service_p99_ms": percentile(s, 99) * 1000,
                            "naive_p50_ms": percentile(b, 50) * 1000,
                            "naive_p99_ms": percentile(b, 99) * 1000,
                            "service_n": len(s),
                            "naive_n": len(b),
                            "load1": os.getloadavg()[0],
                        }
                        result.rounds.append({"tls": float(tls), **row})
                        for name in ("service_p50", "service_p99", "naive_p50", "naive_p99"):
                            stats[name].append(row[name + "_ms"])
                        print(
                            f"{variant} round {round_no}: /send p50 {row['service_p50_ms']:.2f} ms "
                            f"p99 {row['service_p99_ms']:.2f} ms ({len(s)} sends); naive smtplib "
                            f"p50 {row['naive_p50_ms']:.2f} ms p99 {row['naive_p99_ms']:.2f} ms "
                            f"({len(b)} sends); load {row['load1']:.2f}",
                            flush=True,
                        )
    # Best (lowest) round of each, as timeit does; every round is in the JSON.
    tls_stats, plain = summary["starttls"], summary["none"]
    result.value, result.baseline = min(tls_stats["service_p50"]), min(tls_stats["naive_p50"])
    result.ratio = result.value / result.baseline
    plain_ratio = min(plain["service_p50"]) / min(plain["naive_p50"])
    result.ok = result.ratio <= TARGET_TLS and plain_ratio <= TARGET_PLAIN
    result.notes.append(
        f"STARTTLS: p99 /send {min(tls_stats['service_p99']):.2f} ms vs naive "
        f"{min(tls_stats['naive_p99']):.2f} ms"
    )
    result.notes.append(
        f"no TLS: p50 /send {min(plain['service_p50']):.2f} ms vs naive "
        f"{min(plain['naive_p50']):.2f} ms (ratio {plain_ratio:.2f}, target "
        f"{TARGET_PLAIN}); p99 "
        f"{min(plain['service_p99']):.2f} vs {min(plain['naive_p99']):.2f} ms"
    )
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
