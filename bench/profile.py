"""Sample a running process with py-spy and say where its time goes.

    python bench/profile.py PID SECONDS OUT.txt     # record, then summarize
    python bench/profile.py --summarize OUT.txt     # summarize an earlier recording

The summary lists, per thread group, the functions with the largest share of
samples (inclusive: a function and what it calls), so the hot path reads top down.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# py-spy --format raw writes one collapsed stack per line: "thread;frame;frame... count".
_THREAD_NAME = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \((0x[0-9a-fA-F]+)\)")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start py-spy in the background; wait() on it for the file."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if match is None:
        return frame
    return f"{match[1]} ({Path(match[2]).name})"


def summarize(raw: Path, top: int = 25) -> str:
    """Inclusive sample share of the hottest functions, by thread kind."""
    by_thread: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        # Group the delivery threads together, by their name if py-spy gave it.
        kind = re.sub(r"0x[0-9a-fA-F]+", "", thread).strip()
        names = {_frame_name(f) for f in frames[1:]}
        kind = _thread_kind(names, kind)
        totals[kind] += count
        seen = by_thread.setdefault(kind, Counter())
        for name in names:  # once per stack: inclusive time
            seen[name] += count
    everything = sum(totals.values()) or 1
    lines = [f"{everything} samples"]
    for kind, total in totals.most_common():
        lines.append(f"== {kind}: {total} samples ({100 * total / everything:.0f}% of all)")
        for name, count in by_thread[kind].most_common(top):
            lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def _thread_kind(names: set[str], fallback: str) -> str:
    joined = " ".join(names)
    for marker, kind in (
        ("_deliver_loop", "delivery threads"),
        ("_schedule_loop", "scheduler thread"),
        ("run_until_complete", "event loop (HTTP)"),
        ("uvloop", "event loop (HTTP)"),
        ("_worker (thread.py)", "thread pool"),
    ):
        if marker in joined:
            return kind
    return fallback or "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summarize", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("args", nargs="*")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.top))
        return 0
    pid, seconds, out = int(args.args[0]), float(args.args[1]), Path(args.args[2])
    record(pid, seconds, out).wait()
    print(summarize(out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
