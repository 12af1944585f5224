"""nox -s mailpit_npm: the mailpit-api npm client against a real ``python -m fakesmtp``.

Starts fakesmtp on free ports, sends it three messages by smtplib (one with text,
HTML, an inline image and a PDF attachment), runs mailpit_client_check.mjs with
fakesmtp's HTTP URL, stops fakesmtp, and exits with node's status. Needs Node.js 18+
and ``npm ci`` run in tests/npm first (the nox session does both).
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
from email import policy
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
READY = re.compile(r"^fakesmtp SMTP on (?P<host>[\d.]+):(?P<port>\d+) HTTP on (?P<http>\S+)$")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PDF = b"%PDF-1.4\n" + b"fakesmtp " * 40 + b"\n%%EOF\n"


def invoice(number: int, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "billing@example.com"
    msg["To"] = to
    msg["Subject"] = f"Invoice {number}"
    msg["Message-ID"] = f"<invoice-{number}@example.com>"
    msg.set_content(f"Invoice {number}: please pay.\n")
    return msg.as_bytes(policy=policy.SMTP)


def report() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann Example <ann@example.com>"
    msg["To"] = "Bob <bob@example.org>"
    msg["Subject"] = "Quarterly report"
    msg["Message-ID"] = "<quarterly-report@example.com>"
    msg.set_content("Hello Bob, the report is attached.\n")
    msg.add_alternative(
        '<p>Hello Bob, the report is attached.</p><img src="cid:logo@example.com">\n',
        subtype="html",
    )
    html = msg.get_payload()[1]
    html.add_related(PNG, "image", "png", cid="<logo@example.com>", filename="logo.png")
    html.get_payload()[1].replace_header("Content-Disposition", 'inline; filename="logo.png"')
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes(policy=policy.SMTP)


def main() -> int:
    fakesmtp = subprocess.Popen(
        [sys.executable, "-m", "fakesmtp", "--port", "0", "--http-port", "auto"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fakesmtp.stdout is not None
        line = fakesmtp.stdout.readline().strip()
        ready = READY.match(line)
        if ready is None:
            print(f"fakesmtp did not start: {line!r}", file=sys.stderr)
            return 1
        with smtplib.SMTP(ready["host"], int(ready["port"]), timeout=10) as client:
            client.sendmail(
                "billing@example.com", ["alice@example.org"], invoice(1, "alice@example.org")
            )
            client.sendmail("ann@example.com", ["bob@example.org"], report())
            client.sendmail(
                "billing@example.com", ["carol@example.org"], invoice(2, "carol@example.org")
            )
        check = HERE / "mailpit_client_check.mjs"
        return subprocess.run(["node", str(check), ready["http"]], check=False).returncode
    finally:
        fakesmtp.send_signal(signal.SIGTERM)
        fakesmtp.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
