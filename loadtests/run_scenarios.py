"""Run the locust scenarios against a service and fakesmtp started here, then check them.

    python loadtests/run_scenarios.py                       # both scenarios, 20 s each
    python loadtests/run_scenarios.py --scenario overload --run-time 60 --users 30

For each scenario: start fakesmtp (`python -m fakesmtp`, free ports) and the service
(`python -m service`, SQLite in a temporary directory, a generated API key), run locust
headless for --run-time seconds, wait for the backlog to drain, then check

- locust counted no failures (a 503 with Retry-After is "shed", not a failure);
- the relay received exactly the messages answered 202 or 200: as many as were
  answered, every answered Message-ID among them, none twice (nothing lost,
  nothing doubled);
- steady: nothing was shed; overload: something was.

Reports (locust CSV and HTML, process logs, the tally) go to loadtests/reports/<scenario>/.
Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import FakeSMTP, Service, load_average, wait_until

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "reports"
DRAIN_TIMEOUT = 180.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fakesmtp_args: tuple[str, ...]
    service_env: dict[str, str]
    users: int
    expect_shed: bool


SCENARIOS = {
    "steady": Scenario(
        name="steady",
        description="fast relay: every request answered 202 or 200, the backlog drains",
        fakesmtp_args=(),
        service_env={"QUEUE_MAXSIZE": "5000"},
        users=10,
        expect_shed=False,
    ),
    "overload": Scenario(
        name="overload",
        # 10 ms before each of the ~5 replies of a transaction: ~50 ms per message
        # on each of the 4 connections, ~80 msgs/s, well under what locust offers.
        description="relay slowed to ~80 msgs/s, QUEUE_MAXSIZE=200: 503s with Retry-After",
        fakesmtp_args=("--latency", "0.01"),
        service_env={"QUEUE_MAXSIZE": "200"},
        users=10,
        expect_shed=True,
    ),
}


@dataclass
class Outcome:
    scenario: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def _percentile(histogram: Counter[float], p: float) -> float:
    """From locust's {rounded milliseconds: count} histogram."""
    total = sum(histogram.values())
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= p / 100 * total:
            return value
    return 0.0


def _locust_totals(json_path: Path) -> dict[str, float]:
    """Final totals from --json-file (the CSV is written on a timer and may miss the end)."""
    entries = json.loads(json_path.read_text())
    histogram: Counter[float] = Counter()
    for entry in entries:
        histogram.update({float(k): v for k, v in entry["response_times"].items()})
    requests = sum(entry["num_requests"] for entry in entries)
    first = min((entry["start_time"] for entry in entries), default=0.0)
    last = max((entry["last_request_timestamp"] or 0.0 for entry in entries), default=0.0)
    return {
        "requests": requests,
        "failures": sum(entry["num_failures"] for entry in entries),
        "rps": requests / (last - first) if last > first else 0.0,
        "p50_ms": _percentile(histogram, 50),
        "p99_ms": _percentile(histogram, 99),
    }


def run_scenario(scenario: Scenario, run_time: int, users: int | None) -> Outcome:
    outcome = Outcome(scenario.name)
    out_dir = REPORTS / scenario.name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        old.unlink()
    users = users or scenario.users
    tally_path = out_dir / "tally.json"
    csv_prefix = out_dir / "locust"
    with tempfile.TemporaryDirectory(prefix=f"load-{scenario.name}-") as tmp:
        fake = FakeSMTP(out_dir, ["--max-messages", "1000000", *scenario.fakesmtp_args])
        service = Service(
            out_dir,
            Path(tmp) / "mail.db",
            {"SMTP_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **scenario.service_env},
        )
        try:
            fake.start()
            service.env["SMTP_PORT"] = str(fake.port)
            service.start()
            print(
                f"[{scenario.name}] {scenario.description}; {users} users for {run_time}s "
                f"(load average {load_average()})",
                flush=True,
            )
            command = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(HERE / "locustfile.py"),
                "--headless",
                "--users",
                str(users),
                "--spawn-rate",
                str(users),
                "--run-time",
                f"{run_time}s",
                "--host",
                service.url,
                "--csv",
                str(csv_prefix),
                "--html",
                str(out_dir / "locust.html"),
                "--json-file",
                str(out_dir / "locust"),  # locust adds .json
                "--only-summary",
                "--stop-timeout",
                "10",
            ]
            env = {
                **os.environ,
                "MAIL_API_KEY": service.api_key,
                "MAIL_LOAD_TALLY": str(tally_path),
            }
            with (out_dir / "locust.log").open("wb") as log:
                locust = subprocess.run(
                    command, env=env, stdout=log, stderr=log, timeout=run_time + 120, check=False
                )
            # locust exits 1 when any request failed; the CSV says which, checked below.
            outcome.numbers["locust_exit"] = locust.returncode
            totals = _locust_totals(out_dir / "locust.json")
            outcome.numbers.update(totals)
            tally = json.loads(tally_path.read_text())
            answered = tally["accepted"] + tally["sent"]
            outcome.numbers.update(
                accepted=tally["accepted"], sent_sync=tally["sent"], shed=tally["shed"]
            )
            outcome.check(
                "locust: no failures",
                totals["failures"] == 0,
                f"{totals['failures']:.0f} of {totals['requests']:.0f} (see locust.html)",
            )
            if scenario.expect_shed:
                outcome.check(
                    "overload: some requests shed with 503 + Retry-After",
                    tally["shed"] > 0,
                    f"shed={tally['shed']}",
                )
            else:
                outcome.check("steady: nothing shed", tally["shed"] == 0, f"shed={tally['shed']}")

            # The backlog drains: the relay has as many as were answered, and the
            # service counts nothing unfinished.
            started = time.monotonic()
            drained = wait_until(
                lambda: (
                    fake.stats()["messages"] >= answered and service.metric("mail_backlog") == 0
                ),
                DRAIN_TIMEOUT,
                interval=0.5,
            )
            outcome.numbers["drain_s"] = time.monotonic() - started
            # A little longer, so that a late duplicate would arrive before we count.
            time.sleep(1.0)
            outcome.check(
                "backlog drained",
                drained,
                f"in {outcome.numbers['drain_s']:.1f}s, backlog "
                f"{service.metric('mail_backlog'):.0f}",
            )
            delivered = Counter(m["message_id"] for m in fake.summaries())
            expected = Counter(tally["message_ids"])
            doubled = sum(n - 1 for n in delivered.values() if n > 1)
            lost = sum((expected - delivered).values())
            extra = sum((delivered - expected).values())
            outcome.numbers.update(delivered=sum(delivered.values()))
            outcome.check(
                "delivered == answered 202 + answered 200",
                sum(delivered.values()) == answered,
                f"delivered {sum(delivered.values())}, answered {answered}",
            )
            outcome.check("nothing lost", lost == 0, f"{lost} answered but never delivered")
            outcome.check("nothing doubled", doubled == 0, f"{doubled} Message-IDs twice")
            outcome.check("nothing unexpected", extra == 0, f"{extra} delivered, never answered")
            code = service.terminate(timeout=30)
            outcome.check("service exits 0 on SIGTERM", code == 0, f"exit {code}")
        except Exception as exc:  # report it as a failed check, then move on
            outcome.check("scenario ran", False, f"{type(exc).__name__}: {exc}")
        finally:
            service.stop()
            fake.stop()
    (out_dir / "summary.json").write_text(
        json.dumps({"checks": outcome.checks, "numbers": outcome.numbers}, indent=2)
    )
    return outcome


def print_summary(outcome: Outcome) -> None:
    n = outcome.numbers
    if "requests" in n:
        print(
            f"[{outcome.scenario}] {n['requests']:.0f} requests ({n['rps']:.0f}/s, "
            f"p50 {n['p50_ms']:.0f} ms, p99 {n['p99_ms']:.0f} ms): "
            f"202={n.get('accepted', 0):.0f} 200={n.get('sent_sync', 0):.0f} "
            f"503 shed={n.get('shed', 0):.0f} failures={n['failures']:.0f}; "
            f"delivered={n.get('delivered', 0):.0f}, drained in {n.get('drain_s', 0):.1f}s"
        )
    for name, ok, detail in outcome.checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--run-time", type=int, default=20, help="seconds of load per scenario")
    parser.add_argument(
        "--users", type=int, default=None, help="locust users (default: per scenario)"
    )
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    outcomes = []
    for name in names:
        outcome = run_scenario(SCENARIOS[name], args.run_time, args.users)
        print_summary(outcome)
        outcomes.append(outcome)
    failed = [o.scenario for o in outcomes if not o.ok]
    print("all scenarios passed" if not failed else f"FAILED: {', '.join(failed)}")
    print(f"reports in {REPORTS}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
