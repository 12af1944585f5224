"""Run every benchmark, each in its own process, and print one table of ratios.

    python bench/run_all.py                    # all, default sizes
    python bench/run_all.py --only accept drain --rounds 3
    python bench/run_all.py --quick            # smaller sizes, a smoke run

Each benchmark is also runnable alone (bench/accept.py, bench/drain.py,
bench/sync_latency.py, bench/memory.py); results go to bench/results/ (gitignored)
as JSON. Exits 1 if any benchmark missed its target or failed to run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = {
    "accept": ["--seconds", "10", "--connections", "32"],
    "drain": ["--messages", "20000"],
    "sync_latency": ["--seconds", "8"],
    "memory": ["--messages", "100000"],
    "batch": ["--batches", "20"],
    "listing": ["--small", "10000", "--large", "1000000"],
    "attachment_memory": ["--megabytes", "10"],
    "webhook_accept": ["--seconds", "8"],
    "bounce_parse": ["--seconds", "5"],
}
QUICK = {
    "accept": ["--seconds", "3", "--connections", "32"],
    "drain": ["--messages", "3000"],
    "sync_latency": ["--seconds", "2"],
    "memory": ["--messages", "5000"],
    "batch": ["--batches", "4"],
    "listing": ["--small", "2000", "--large", "20000", "--requests", "50"],
    "attachment_memory": ["--megabytes", "2"],
    "webhook_accept": ["--seconds", "2"],
    "bounce_parse": ["--seconds", "1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for name in args.only:
        out = RESULTS / f"{name}.json"
        out.unlink(missing_ok=True)
        extra = (QUICK if args.quick else BENCHMARKS)[name]
        command = [
            sys.executable,
            str(HERE / f"{name}.py"),
            *extra,
            "--rounds",
            str(args.rounds),
            "--json",
            str(out),
        ]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=False)
        if out.exists():
            rows.append(json.loads(out.read_text()))
        else:
            rows.append(
                {
                    "name": name,
                    "ok": False,
                    "metric": "did not finish",
                    "value": 0,
                    "baseline": 0,
                    "ratio": 0,
                    "target": "",
                    "load_before": "",
                    "load_after": "",
                }
            )
    print()
    header = (
        f"{'benchmark':<13} {'service':>10} {'baseline':>10} {'ratio':>6}  {'target':<28} result"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<13} {row['value']:>10.1f} {row['baseline']:>10.1f} "
            f"{row['ratio']:>6.2f}  {row['target'][:28]:<28} {'OK' if row['ok'] else 'MISSED'}"
        )
        print(f"{'':<13} {row['metric']}; load {row['load_before']} -> {row['load_after']}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
