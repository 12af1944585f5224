"""Schemathesis against the service's own OpenAPI schema (the `nox -s contract` session).

Starts a fakesmtp relay and the app under uvicorn on free ports (SQLite in a temporary
directory), loads /openapi.json, and fuzzes every operation in positive and negative
mode with a valid key, without a key and with a wrong key. Checks:

- no 5xx, except the documented 500 of POST /send (a SendResponse with ok=false, the
  relay refused) and the 503 of POST /send_async (queue full / database / shutdown);
- every response matches its schema (status code documented, body valid);
- without a valid key, every protected operation answers 401.

Bounded: --max-examples per operation, mode and key variant (default 50). Exits 1 on any
failure, printing each with a curl command to reproduce it.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.specs.openapi.checks import response_schema_conformance

# Run as a script, Python puts tests/ first on sys.path, where tests/fakesmtp (the fake
# server's own tests) would shadow the package: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fakesmtp import FakeSMTPServer
from service.app import create_app
from service.config import Settings

KEY = "schemathesis-key-0123456789"
PROTECTED = {
    ("POST", "/send"),
    ("POST", "/send_async"),
    ("POST", "/send_batch"),
    ("GET", "/messages"),
    ("GET", "/messages/{message_id}"),
    ("POST", "/messages/{message_id}/cancel"),
}
KEY_VARIANTS: dict[str, dict[str, str] | None] = {
    "valid key": {"X-API-Key": KEY},
    "no key": None,
    "wrong key": {"X-API-Key": "not-the-key"},
}


@schemathesis.check
def no_undocumented_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """5xx only where the contract documents one."""
    status = response.status_code
    if status < 500:
        return None
    route = (case.operation.method.upper(), case.operation.path)
    if status == 500 and route == ("POST", "/send"):
        body = response.json()
        assert body.get("ok") is False, f"500 from /send without ok=false: {body}"
        return None
    if status == 503 and route in {("POST", "/send_async"), ("POST", "/send_batch")}:
        return None
    raise AssertionError(f"undocumented server error {status} from {route[0]} {route[1]}")


def auth_enforced(expect_401: bool) -> Any:
    @schemathesis.check
    def key_required(ctx: CheckContext, response: Response, case: Case) -> bool | None:
        route = (case.operation.method.upper(), case.operation.path)
        if expect_401 and route in PROTECTED:
            assert response.status_code == 401, (
                f"{route[0]} {route[1]} answered {response.status_code} without a valid key"
            )
        return None

    return key_required


class Server:
    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def mail_addresses() -> st.SearchStrategy[str]:
    """The schema's "mail-address" format: addr-specs, sometimes with a display name."""
    names = st.text(
        st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]).filter(
            lambda c: c not in '"\\'
        ),
        max_size=20,
    )
    return st.one_of(
        st.emails(),
        st.builds(lambda name, addr: f'"{name}" <{addr}>', names, st.emails()),
    )


def run_variant(
    url: str, operation: Any, mode: GenerationMode, headers: dict[str, str] | None, examples: int
) -> None:
    checks = [
        no_undocumented_server_error,
        response_schema_conformance,
        auth_enforced(expect_401=headers != KEY_VARIANTS["valid key"]),
    ]

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        # The key is ours to set: drop whatever the generator put there.
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}
        case.call_and_validate(base_url=url, headers=headers or {}, checks=checks, timeout=30)

    run()


def fuzz(url: str, max_examples: int) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for variant, headers in KEY_VARIANTS.items():
                label = f"{operation.label} [{mode.value}, {variant}]"
                started = time.monotonic()
                try:
                    run_variant(url, operation, mode, headers, max_examples)
                except hypothesis.errors.Unsatisfiable:
                    # No parameters and no body: there is nothing to make invalid.
                    print(f"n/a  {label} (no input to make invalid)", flush=True)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # FailureGroup is an exception group
                    failures.append(f"{label}\n{exc}")
                    print(f"FAIL {label}", flush=True)
                else:
                    print(f"ok   {label} ({time.monotonic() - started:.1f}s)", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-examples", type=int, default=50)
    args, _ = parser.parse_known_args(argv)  # nox passes its posargs to pytest too
    schemathesis.openapi.format("mail-address", mail_addresses())
    with tempfile.TemporaryDirectory() as scratch, FakeSMTPServer(port=0) as relay:
        settings = Settings(
            api_key=KEY,  # type: ignore[arg-type]  # validated from the comma-separated form
            database_url=f"sqlite:///{Path(scratch) / 'mail.db'}",
            smtp_host=relay.host,
            smtp_port=relay.port,
            smtp_max_retries=0,
            max_message_bytes=256 * 1024,
            queue_maxsize=100_000,
            log_level="WARNING",
        )
        with Server(settings) as server:
            failures = fuzz(server.url, args.max_examples)
    for failure in failures:
        print("\n" + "=" * 78 + "\n" + failure)
    print(f"\nschemathesis: {len(failures)} failing operation variant(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
