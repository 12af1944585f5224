"""Sessions for CI and for people: `nox` runs lint, typecheck and tests.

Opt-in sessions: `unit`, `e2e`, `postgres` (the tests by what they cost),
`coverage` (the tests with every subprocess measured too),
`contract` (tests/api, then schemathesis), `mailpit_npm` (the mailpit-api npm
client against fakesmtp; needs Node.js and npm), `dev` (service + fakesmtp),
`load` (locust), `bench` (benchmark scripts), `soak` (crash recovery at length:
random SIGKILLs and SIGTERMs under load). Each session installs what it
needs into its own virtualenv, so a fresh clone needs only nox itself.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests"]

# None: the interpreter nox runs under (3.11 or newer, per pyproject), so a fresh
# machine needs no particular Python version installed beside it.
PYTHON = None

# fakesmtp is a distribution of its own (fakesmtp/pyproject.toml) that the service
# depends on by name: naming its directory beside the service lets pip and uv alike
# take it from here, not look for it on an index.
FAKESMTP = ("-e", "./fakesmtp")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: style and common bugs."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over both packages."""
    session.install(*FAKESMTP, "-e", ".[test]", "mypy>=1.11")
    session.run("mypy")


def _pytest_with_coverage(session: nox.Session, env: dict[str, str]) -> None:
    session.install(*FAKESMTP, "-e", ".[test]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs, env=env)
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test run: every test (unit, e2e, postgres), with a coverage floor.

    Coverage measures the test process only: traced, the service processes of the
    e2e tests run at a third of their speed and the run took 18 minutes instead of
    7. `nox -s coverage` measures them too."""
    _pytest_with_coverage(session, {})


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """The default test run with every subprocess measured too (python -m service,
    python -m fakesmtp, the CLIs): the whole picture, at about 2.5 times the time."""
    _pytest_with_coverage(session, {"COVERAGE_PROCESS_START": "pyproject.toml"})


def _pytest_marked(session: nox.Session, marker: str) -> None:
    session.install(*FAKESMTP, "-e", ".[test]")
    session.run("pytest", "-m", marker, *session.posargs)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """In-process tests (servers on 127.0.0.1 in threads, no processes). Their PostgreSQL
    cases are marked `postgres` too: `nox -s unit -- -m "unit and not postgres"` skips them."""
    _pytest_marked(session, "unit")


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """Tests that start real processes (python -m service, python -m fakesmtp)."""
    _pytest_marked(session, "e2e")


@nox.session(python=PYTHON)
def postgres(session: nox.Session) -> None:
    """Tests on PostgreSQL: a throwaway server they start from the installed binaries."""
    _pytest_marked(session, "postgres")


@nox.session(python=PYTHON)
def contract(session: nox.Session) -> None:
    """The HTTP API's tests (tests/api), then schemathesis against its own OpenAPI schema."""
    session.install(*FAKESMTP, "-e", ".[test,contract]")
    session.run("pytest", "tests/api", *session.posargs)
    session.run("python", "tests/schemathesis_run.py", *session.posargs)


@nox.session(python=PYTHON)
def mailpit_npm(session: nox.Session) -> None:
    """The mailpit-api npm client against `python -m fakesmtp`'s Mailpit API v1, with the
    machine's Node.js (18 or newer) and npm: tests/npm/run_mailpit_npm.py sends the mail,
    tests/npm/mailpit_client_check.mjs checks it through the client."""
    session.install(*FAKESMTP, "-e", ".")
    session.run("npm", "ci", "--prefix", "tests/npm", "--no-audit", "--no-fund", external=True)
    session.run("python", "tests/npm/run_mailpit_npm.py")


@nox.session(python=PYTHON)
def dev(session: nox.Session) -> None:
    """Run the service and fakesmtp together on SQLite and print where everything is."""
    session.install(*FAKESMTP, "-e", ".")
    # nox does not pass its own SIGTERM on: the server stops when nox is gone.
    session.run("python", "-m", "service.devserver", "--stop-with-parent", *session.posargs)


@nox.session(python=PYTHON)
def load(session: nox.Session) -> None:
    """Locust scenarios `steady` and `overload` against a service and fakesmtp started here."""
    session.install(*FAKESMTP, "-e", ".[test,load]")
    session.run("python", "loadtests/run_scenarios.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark scripts; each prints a ratio against a baseline measured in the same run."""
    session.install(*FAKESMTP, "-e", ".[test,bench]")
    session.run("python", "bench/run_all.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Crash recovery at length: 100,000 messages, 50 SIGKILLs and 10 SIGTERMs on SQLite,
    then on PostgreSQL (tests/e2e/chaos.py; arguments after -- replace the defaults)."""
    session.install(*FAKESMTP, "-e", ".[test]")
    args = session.posargs or ["--messages", "100000", "--kills", "50", "--terms", "10"]
    for database in ("sqlite", "postgres"):
        session.run("python", "-m", "tests.e2e.chaos", "--database", database, *args)
