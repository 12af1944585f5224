"""How long render_message takes, against the email package's two classic ways.

Run: python bench/render_bench.py [--number N]   (package installed, or PYTHONPATH=.)

Prints microseconds per message (best of 5 runs) for a typical small message:
- render_message, text only and text+html (our code: validation, parsing, headers);
- the same message with EmailMessage + policy.SMTP (the "modern" baseline);
- the same with compat32 MIMEText (the "legacy" baseline).
Each address is new on every message for the "fresh addresses" rows, so the address
cache in render_message does not flatter them.
"""

from __future__ import annotations

import argparse
import itertools
import timeit
import uuid
from email.message import EmailMessage
from email.mime.text import MIMEText
from email.policy import SMTP, compat32
from email.utils import formatdate

from service.mailer import render_message
from service.models import SendRequest

BODY = "Hello,\n\nYour order 12345 has shipped and will arrive on Tuesday.\n\nThanks!\n"
HTML = "<p>Hello,</p><p>Your order <b>12345</b> has shipped.</p>"
SUBJECT = "Your order has shipped"
_COMPAT32_CRLF = compat32.clone(linesep="\r\n")


def modern() -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Shop <noreply@example.com>"
    msg["To"] = "user@example.org"
    msg["Subject"] = SUBJECT
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    msg.set_content(BODY)
    return msg.as_bytes()


def legacy() -> bytes:
    msg = MIMEText(BODY, "plain", "us-ascii")
    msg["From"] = "Shop <noreply@example.com>"
    msg["To"] = "user@example.org"
    msg["Subject"] = SUBJECT
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    return msg.as_bytes(policy=_COMPAT32_CRLF)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    counter = itertools.count()

    def request(html: str | None, fresh: bool) -> SendRequest:
        to = f"user{next(counter)}@example.org" if fresh else "user@example.org"
        return SendRequest.model_validate(
            {
                "to": [to],
                "from": "Shop <noreply@example.com>",
                "subject": SUBJECT,
                "body": BODY,
                "html": html,
            }
        )

    same_text = request(None, fresh=False)
    same_html = request(HTML, fresh=False)
    cases = {
        "render_message, text": lambda: render_message(same_text, default_from="x@localhost"),
        "render_message, text+html": lambda: render_message(same_html, default_from="x@localhost"),
        "render_message, text, fresh addresses": lambda: render_message(
            request(None, fresh=True), default_from="x@localhost"
        ),
        "  (building that SendRequest alone)": lambda: request(None, fresh=True),
        "EmailMessage + policy.SMTP, text": modern,
        "compat32 MIMEText, text": legacy,
    }
    print(f"{'case':42} {'us/message':>10}")
    for name, func in cases.items():
        best = min(timeit.repeat(func, number=args.number, repeat=5)) / args.number
        print(f"{name:42} {best * 1e6:10.1f}")


if __name__ == "__main__":
    main()
