"""Accept with the webhook receiver down: /send_async requests/s of a service whose
WEBHOOK_URL refuses connections, against the same service with no webhook
configured, same run (target >= 0.9).

    python bench/webhook_accept.py --seconds 8 --rounds 3

Both sides deliver for real while they accept (fakesmtp, answering at once), so
every accepted message makes a `message.sent` event: with the receiver down, the
events pile up and the dispatcher keeps probing the receiver, which is what must
not slow the accept path. Each round starts a fresh service (a fresh SQLite
database) per side, sides alternating, driven by bench/httpload.py.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accept import drive
from bench.common import Result, finish, median, parser, workdir
from bench.procs import FakeSMTP, Service, free_port

TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--keep", type=Path, help="keep logs here (default: a temporary directory)")
    args = p.parse_args(argv)
    result = Result.begin("webhook_accept", "/send_async requests/s", f">= {TARGET}")
    down_rates: list[float] = []
    none_rates: list[float] = []
    pending: list[float] = []
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with workdir("bench-webhooks-", args.keep) as (tmp, logs), FakeSMTP(logs) as fake:
        for round_no in range(args.rounds):
            order = ("down", "none") if round_no % 2 == 0 else ("none", "down")
            for side in order:
                env = {
                    "SMTP_HOST": fake.host,
                    "SMTP_PORT": str(fake.port),
                    "QUEUE_MAXSIZE": "10000000",
                }
                if side == "down":
                    # A port nobody listens on: every call is refused at once.
                    env.update(
                        WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hooks",
                        WEBHOOK_SECRET=secret,
                    )
                service = Service(
                    logs,
                    Path(tmp) / f"{side}-{round_no}.db",
                    env,
                    name=f"service-{side}-{round_no}",
                )
                with service:
                    drive(service.port, service.api_key, args.connections, args.warmup)
                    run = drive(service.port, service.api_key, args.connections, args.seconds)
                    others = {k: v for k, v in run.statuses.items() if k != 202}
                    if others:
                        result.notes.append(f"round {round_no} {side}: non-202 answers {others}")
                    rate = run.statuses[202] / run.seconds
                    if side == "down":
                        down_rates.append(rate)
                        pending.append(service.metric("mail_webhook_events_pending"))
                    else:
                        none_rates.append(rate)
            result.rounds.append(
                {
                    "receiver_down_rps": down_rates[-1],
                    "no_webhook_rps": none_rates[-1],
                    "ratio": down_rates[-1] / none_rates[-1],
                    "events_pending_at_end": pending[-1],
                    "load1": os.getloadavg()[0],
                }
            )
            print(
                f"round {round_no}: receiver down {down_rates[-1]:.0f} req/s "
                f"({pending[-1]:.0f} events pending), no webhook {none_rates[-1]:.0f} req/s, "
                f"ratio {down_rates[-1] / none_rates[-1]:.2f}",
                flush=True,
            )
    result.value, result.baseline = median(down_rates), median(none_rates)
    result.ratio = median([r["ratio"] for r in result.rounds])
    result.ok = result.ratio >= TARGET and not result.notes and min(pending) > 0
    result.notes.append(
        f"medians of {args.rounds} rounds; {args.connections} connections, "
        f"{args.seconds:.0f} s per side per round; events pending at the end of each "
        f"receiver-down run: {', '.join(f'{n:.0f}' for n in pending)}"
    )
    return finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
