"""Attachment memory: how much a 10 MB attachment raises the service's peak RSS while it
is received, decoded, built and stored, as a multiple of the attachment's size
(target <= 8: a small multiple; the request's base64 text alone is 1.33x).

    python bench/attachment_memory.py --megabytes 10 --rounds 3

Each round starts `python -m service` (SQLite, the relay blocked so that nothing
is sent while we measure, MAX_MESSAGE_BYTES raised to hold the built message),
warms it with one small message with a small attachment, reads its peak RSS
(VmHWM, /proc), posts one /send_async with an attachment of --megabytes random
bytes, and reads the peak again. Baseline of our own, in the same round: the
same request to the same service with the attachment left out (what the
request's parsing costs besides the file).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Result, finish, median, parser, workdir
from bench.procs import BLOCKED_RELAY_ARGS, FakeSMTP, Service, memory_kib

TARGET = 8.0


def post(service: Service, attachment: bytes | None) -> None:
    body: dict[str, object] = {"to": "ana@example.com", "subject": "file", "body": "see the file"}
    if attachment is not None:
        body["attachments"] = [
            {"filename": "data.bin", "content": base64.b64encode(attachment).decode()}
        ]
    response = httpx.post(
        service.url + "/send_async",
        content=json.dumps(body).encode(),
        headers={"X-API-Key": service.api_key, "Content-Type": "application/json"},
        timeout=120,
    )
    if response.status_code != 202:
        raise SystemExit(f"{response.status_code}: {response.text[:300]}")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=float, default=10.0)
    p.add_argument("--keep", type=Path, help="keep logs here")
    args = p.parse_args(argv)
    size = int(args.megabytes * 1024 * 1024)
    result = Result.begin("attachment_memory", "peak RSS growth / attachment size", f"<= {TARGET}")
    multiples: list[float] = []
    with (
        workdir("bench-attach-", args.keep) as (tmp, logs),
        FakeSMTP(logs, BLOCKED_RELAY_ARGS) as fake,
    ):
        for round_no in range(args.rounds):
            env = {
                **fake.relay_env(),
                "MAX_MESSAGE_BYTES": str(size * 2 + 1024 * 1024),
            }
            key = secrets.token_urlsafe(24)
            with Service(logs, Path(tmp) / f"a-{round_no}.db", env, api_key=key) as service:
                post(service, os.urandom(1000))
                before = memory_kib(service.pid, "VmHWM")
                post(service, None)
                plain = memory_kib(service.pid, "VmHWM") - before
                post(service, os.urandom(size))
                grown = memory_kib(service.pid, "VmHWM") - before
            multiple = grown * 1024 / size
            multiples.append(multiple)
            result.rounds.append(
                {
                    "peak_before_kib": before,
                    "growth_kib": grown,
                    "growth_without_file_kib": plain,
                    "multiple": multiple,
                }
            )
            print(
                f"round {round_no}: peak {before / 1024:.1f} MiB before, +{grown / 1024:.1f} MiB "
                f"for a {size / 1024 / 1024:.1f} MiB file ({multiple:.2f}x), +{plain / 1024:.1f} "
                "MiB without it",
                flush=True,
            )
    result.value = median(multiples)
    result.baseline = 1.0
    result.ratio = result.value
    result.ok = result.ratio <= TARGET
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
