"""Every shell command of the README and the docs runs as written from a fresh clone.

The commands are those of the fenced blocks marked sh, bash, shell or console in every
Markdown file of the repository (`git ls-files`); in a block with `$ ` prompts the
prompted lines are commands and the others their output. Each command is one of:

- run: fakesmtp's command lines (started, its start-up line read, SIGTERM, exit 0),
  `python -c` one-liners, the README's API curls against `python -m service.devserver`
  (what `nox -s dev` runs) and docs/fakesmtp.md's against `python -m fakesmtp`, each
  exiting 0 with the status the docs give;
- checked, where running takes minutes, a database or root: a script is in the
  repository and takes its arguments (its own `--help` after them: argparse checks
  their types and choices on the way, and every `--option` must be in that help), a
  nox session exists and its arguments suit what it runs, a pip install names this
  repository's projects, extras and requirements, an exported variable is one the
  code reads;
- allowed: ALLOWED below, each with its reason.

A command that is none of these fails the run, so a newly documented one gets looked
at. `python`, `fakesmtp` and `mail-service` are this test environment's (its bin
directory first on PATH). Substituted, and nothing else: a port (a free one where the
documented one is taken, and always for the servers these tests start), `<id>` (the
id the previous answer gave) and the `send_at` example dates (the API takes at most 30
days ahead, so any date written in the README expires).
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import re
import select
import shlex
import signal
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
# Not resolved: .nox/tests/bin/python is a link, and its directory is the environment's.
BIN = Path(sys.executable).parent
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
OTHER_LANGUAGES = frozenset({"python", "json", "js", "text"})
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
FAKESMTP_LINE = re.compile(
    r"fakesmtp SMTP on 127\.0\.0\.1:(?P<smtp>\d+) HTTP (?:on http://127\.0\.0\.1:(?P<http>\d+)|off)"
)
# fakesmtp's own defaults (its --help), the ports a command without --port uses.
FAKESMTP_DEFAULT_PORTS = {"--port": "1025", "--http-port": "8025"}

# Commands neither run nor checked, each with why. Keys are the command with its
# whitespace collapsed, as the failure message prints it.
ALLOWED = {
    "OLD/bin/python OLD/bench/run_all.py --only accept drain --rounds 3": (
        "a record of a run in another build's checkout and virtualenv (OLD is a "
        "placeholder); bench/run_all.py's options are checked on the lines that run it here"
    ),
}

# What each README curl answers on a fresh dev server, in the README's order (its answer
# table, "Errors" for the form-encoded body). A curl missing here fails the run.
SERVICE_ANSWERS = {
    "POST /send": 200,
    "POST /send (form)": 422,
    "POST /send_async": 202,
    "GET /messages/<id>": 200,
    "GET /health": 200,
    "GET /metrics": 200,
    "POST /send_batch": 202,
    "GET /messages": 200,
    "POST /messages/<id>/cancel": 200,  # the batch's scheduled message
    "GET /suppressions": 200,
    "PUT /suppressions/gone@example.com": 201,
    "DELETE /suppressions/gone@example.com": 204,
}
# docs/fakesmtp.md's curls against a fakesmtp that has captured one message.
FAKESMTP_ANSWERS = {
    "GET /api/messages": 200,
    "GET /api/messages/1": 200,
    "GET /api/messages/1/raw": 200,
    "DELETE /api/messages": 204,
    "GET /api/stats": 200,
    "GET /api/health": 200,
    "POST /api/faults": 201,
    "GET /api/faults": 200,
    "GET /api/faults/1": 200,
    "DELETE /api/faults/1": 204,
    "DELETE /api/faults": 204,
}

RUN_FAKESMTP = "run: a fakesmtp command line"
RUN_ONE_LINER = "run: python -c"
RUN_SERVICE_CURL = "run: a curl against the dev server"
RUN_FAKESMTP_CURL = "run: a curl against fakesmtp"
RUN_EXPORT_KEY = "run: the key the curls send"
CHECK_SCRIPT = "checked: a script and its arguments"
CHECK_NOX = "checked: nox sessions and their arguments"
CHECK_PIP = "checked: a pip install of this repository's projects"
CHECK_ENV = "checked: variables the service reads"
CHECK_CONSOLE_SCRIPT = "checked: a console script"
CHECK_LOCUST = "checked: a locustfile and the variables it reads"
ALLOWED_KIND = "allowed"
UNKNOWN = "neither run, checked nor allowed"


# -- reading the docs ------------------------------------------------------------------


@functools.cache
def repo_files() -> frozenset[str]:
    """What a fresh clone holds once the tree is committed: tracked files and new ones
    that are not ignored (never a build's or a run's leftovers)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return frozenset(name for name in listing.stdout.splitlines() if (ROOT / name).exists())


@dataclass(frozen=True)
class Block:
    path: str
    line: int  # of the first line inside the fence
    language: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    path: str
    line: int
    text: str  # as pasted: continuations joined, comments dropped
    output: tuple[str, ...] = ()  # a prompted command's output lines in its block

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.key}"

    @property
    def key(self) -> str:
        return " ".join(self.text.split())

    @property
    def words(self) -> list[str]:
        lexer = shlex.shlex(self.text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        return list(lexer)

    @property
    def stages(self) -> list[list[str]]:
        """The pipeline's commands."""
        stages: list[list[str]] = [[]]
        for word in self.words:
            if word == "|":
                stages.append([])
            else:
                stages[-1].append(word)
        return stages

    @property
    def env(self) -> dict[str, str]:
        """The `NAME=value` words before the command."""
        env = {}
        for word in self.stages[0]:
            if not ASSIGNMENT.match(word):
                break
            name, _, value = word.partition("=")
            env[name] = value
        return env

    @property
    def argv(self) -> list[str]:
        return self.stages[0][len(self.env) :]


def fenced_blocks(path: str) -> Iterator[Block]:
    lines = (ROOT / path).read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        yield Block(path, i + 2, opening.group(2), tuple(lines[i + 1 : end]))
        i = end + 1


def split_commands(text: str) -> list[tuple[int, str]]:
    """(offset, command) for each command of shell text: one a line, continued by a
    backslash-newline or an open quote, ended by `&&`; a `#` starting a word outside
    quotes comments out the rest of its line."""
    commands: list[tuple[int, str]] = []
    current, start, quote, i = "", 0, "", 0
    while i < len(text):
        c = text[i]
        if not current.strip() and not c.isspace():
            start = i
        if quote:
            if c == "\\" and quote == '"':
                current += text[i : i + 2]
                i += 2
                continue
            if c == quote:
                quote = ""
            current += c
        elif c == "\\":
            current += " " if text[i + 1 : i + 2] == "\n" else text[i : i + 2]
            i += 2
            continue
        elif c in "'\"":
            quote = c
            current += c
        elif c == "#" and (not current or current[-1].isspace()):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == "\n" or text.startswith("&&", i):
            if current.strip():
                commands.append((start, current.strip()))
            current = ""
            i += 2 if c == "&" else 1
            continue
        else:
            current += c
        i += 1
    assert not quote, f"a quote left open in {text!r}"
    if current.strip():
        commands.append((start, current.strip()))
    return commands


def block_commands(block: Block) -> Iterator[Command]:
    prompted = block.language == "console" or any(x.startswith("$ ") for x in block.lines)
    kept = list(block.lines)
    outputs: dict[int, list[str]] = {}
    if prompted:
        # Output lines become blank ones, so that line numbers still count true.
        continued, owner = False, -1
        for n, line in enumerate(block.lines):
            if continued or line.startswith("$ "):
                kept[n] = line if continued else line[2:]
                owner = owner if continued else n
                continued = line.endswith("\\")
            else:
                kept[n] = ""
                if owner >= 0:
                    outputs.setdefault(owner, []).append(line)
    joined = "\n".join(kept)
    for offset, text in split_commands(joined):
        n = joined.count("\n", 0, offset)
        yield Command(block.path, block.line + n, text, tuple(outputs.get(n, ())))


@functools.cache
def all_blocks() -> tuple[Block, ...]:
    markdown = sorted(name for name in repo_files() if name.endswith(".md"))
    return tuple(block for path in markdown for block in fenced_blocks(path))


@functools.cache
def all_commands() -> tuple[Command, ...]:
    return tuple(
        command
        for block in all_blocks()
        if block.language in SHELL_LANGUAGES
        for command in block_commands(block)
    )


def commands_of(kind: str) -> list[Command]:
    return [command for command in all_commands() if classify(command) == kind]


def curl_url(argv: list[str]) -> str:
    return next((w for w in argv if re.match(r"(https?://)?localhost:\d+", w)), "")


def classify(command: Command) -> str:
    if command.key in ALLOWED:
        return ALLOWED_KIND
    stages = command.stages
    operators = [w for w in command.words if w != "|" and set(w) <= set(";&|")]
    if operators or any(stage != ["jq"] for stage in stages[1:]):
        return UNKNOWN  # a shell construct these checks do not follow
    argv = command.argv
    if not argv:
        return UNKNOWN
    head, rest = argv[0], argv[1:]
    if command.env:
        return CHECK_LOCUST if head == "locust" else UNKNOWN
    if head == "export":
        return RUN_EXPORT_KEY if [w.partition("=")[0] for w in rest] == ["KEY"] else CHECK_ENV
    python = head in ("python", "python3")
    if (python and rest[:2] == ["-m", "pip"]) or head == "pip":
        return CHECK_PIP
    if (python and rest[:2] == ["-m", "nox"]) or head == "nox":
        return CHECK_NOX
    if (python and rest[:2] == ["-m", "fakesmtp"]) or head == "fakesmtp":
        return RUN_FAKESMTP
    if python and rest[:1] == ["-c"]:
        return RUN_ONE_LINER
    if python and rest and rest[0].endswith(".py"):
        return CHECK_SCRIPT
    if head == "curl":
        port = urlsplit("http://" + curl_url(argv).removeprefix("http://")).port
        return {8000: RUN_SERVICE_CURL, 8025: RUN_FAKESMTP_CURL}.get(port or 0, UNKNOWN)
    if head == "mail-service":
        return CHECK_CONSOLE_SCRIPT
    return UNKNOWN


# -- running -----------------------------------------------------------------------------


def shell_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def bash(
    text: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail\n{text}"],
        cwd=cwd,
        env=env or shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def in_parallel(check: Callable[[Command], list[str]], commands: list[Command]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [problem for problems in pool.map(check, commands) for problem in problems]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode(errors="replace") if ready else ""


# -- checks ------------------------------------------------------------------------------


def script_problems(where: str, target: list[str], args: list[str]) -> list[str]:
    """`python <target> <args> --help`: argparse reads the arguments up to --help (their
    types and choices), then the help must name every --option given."""
    script = target[-1]
    if target[0] != "-m" and (script.startswith("/") or script not in repo_files()):
        return [f"{where}: {script} is not a file of the repository"]
    if any(w.startswith("[") or w.endswith("]") for w in args):
        return [f"{where}: [brackets] are usage notation, not arguments a shell passes"]
    ran = subprocess.run(
        [sys.executable, *target, *args, "--help"],
        cwd=ROOT,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ran.returncode != 0:
        return [f"{where}: {' '.join(target)} refused its arguments:\n{ran.stderr[-2000:]}"]
    options = {w.partition("=")[0] for w in args if w.startswith("--")}
    return [
        f"{where}: {' '.join(target)} has no {option} (its --help)"
        for option in sorted(options)
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", ran.stdout)
    ]


def check_script(command: Command) -> list[str]:
    argv = command.argv
    return script_problems(str(command), [argv[1]], argv[2:])


@dataclass(frozen=True)
class Session:
    name: str
    source: str

    def target(self) -> tuple[str, list[str]] | None:
        """What the session's posargs go to: ("pytest", []), or ("python", [script]) or
        ("python", ["-m", module])."""
        if re.search(r"_pytest_\w+\(|session\.run\(\"pytest\"", self.source):
            return ("pytest", [])
        script = re.search(r'session\.run\("python", "([\w/]+\.py)"', self.source)
        if script:
            return ("python", [script.group(1)])
        module = re.search(r'session\.run\(\s*"python", "-m", "([\w.]+)"', self.source)
        if module:
            return ("python", ["-m", module.group(1)])
        return None


@functools.cache
def nox_sessions() -> tuple[dict[str, Session], list[str]]:
    """noxfile.py's sessions by name, and the default ones (nox.options.sessions)."""
    text = (ROOT / "noxfile.py").read_text()
    tree = ast.parse(text)
    sessions: dict[str, Session] = {}
    defaults: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            "nox.session" in ast.unparse(d) for d in node.decorator_list
        ):
            sessions[node.name] = Session(node.name, ast.get_source_segment(text, node) or "")
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "nox.options.sessions":
            defaults = ast.literal_eval(node.value)
    return sessions, defaults


def check_nox(command: Command) -> list[str]:
    argv = command.argv
    args = argv[1:] if argv[0] == "nox" else argv[3:]
    names: list[str] = []
    posargs: list[str] = []
    naming = False
    for n, word in enumerate(args):
        if word == "--":
            posargs = args[n + 1 :]
            break
        if word in ("-s", "--session", "--sessions", "-e"):
            naming = True
        elif word.startswith("-"):
            return [f"{command}: nox option {word} is not one this test knows"]
        elif naming:
            names.append(word)
        else:
            return [f"{command}: {word!r} is not a nox argument"]
    sessions, defaults = nox_sessions()
    problems = [f"{command}: noxfile.py has no session {n!r}" for n in names if n not in sessions]
    for name in names or defaults:
        session = sessions.get(name)
        if session is None or not posargs:
            continue
        target = session.target()
        if target is None:
            problems.append(f"{command}: what nox -s {name} does with arguments is unknown here")
        elif target[0] == "pytest":
            problems += [
                f"{command}: {word} is not a path of the repository"
                for word in posargs
                if not word.startswith("-")
                and not any(f.startswith(word.partition("::")[0]) for f in repo_files())
            ]
        else:
            problems += script_problems(str(command), target[1], posargs)
    return problems


def pyproject(directory: Path) -> dict[str, Any]:
    return tomllib.loads((directory / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def check_pip(command: Command) -> list[str]:
    argv = command.argv
    args = argv[2:] if argv[0] == "pip" else argv[4:]
    if (argv[1] if argv[0] == "pip" else argv[3]) != "install":
        return [f"{command}: only `pip install` is checked"]
    project = pyproject(ROOT)["project"]
    named = {requirement_name(r) for r in project["dependencies"]} | {
        requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra
    }
    problems = []
    for word in args:
        if word == "-e":
            continue
        if word.startswith("-"):
            problems.append(f"{command}: pip option {word} is not one this test knows")
        elif word.startswith("."):
            path, _, extras = word.partition("[")
            directory = (ROOT / path).resolve()
            manifest = (directory / "pyproject.toml").relative_to(ROOT).as_posix()
            if manifest not in repo_files():
                problems.append(f"{command}: {path} is not a project of the repository")
                continue
            declared = pyproject(directory)["project"].get("optional-dependencies", {})
            problems += [
                f"{command}: {path} has no extra {extra!r}"
                for extra in extras.rstrip("]").split(",")
                if extra and extra not in declared
            ]
        elif requirement_name(word) not in named:
            problems.append(f"{command}: {word} is not a requirement named in pyproject.toml")
    return problems


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def check_exports(command: Command) -> list[str]:
    names = [w.partition("=")[0] for w in command.argv[1:]]
    return [f"{command}: the service reads no {n}" for n in names if n not in settings_variables()]


def check_console_script(command: Command) -> list[str]:
    name = command.argv[0]
    scripts = (
        pyproject(ROOT)["project"]["scripts"] | pyproject(ROOT / "fakesmtp")["project"]["scripts"]
    )
    if name not in scripts:
        return [f"{command}: no project declares the console script {name}"]
    ran = subprocess.run(
        [str(BIN / name), *command.argv[1:], "--help"],
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [] if ran.returncode == 0 else [f"{command}: {name} --help failed:\n{ran.stderr}"]


def check_locust(command: Command) -> list[str]:
    argv = command.argv
    if "-f" not in argv:
        return [f"{command}: no -f locustfile"]
    locustfile = argv[argv.index("-f") + 1]
    if locustfile not in repo_files():
        return [f"{command}: {locustfile} is not a file of the repository"]
    source = (ROOT / locustfile).read_text()
    problems = [
        f"{command}: {locustfile} reads no {name}"
        for name in command.env
        if f'"{name}"' not in source
    ]
    # locust's own options are locust's: checked when this environment has it (the
    # `load` extra), which the test environment does not need.
    if (BIN / "locust").exists():
        ran = subprocess.run(
            [str(BIN / "locust"), "--help"], capture_output=True, text=True, check=False
        )
        problems += [
            f"{command}: locust has no {w}"
            for w in argv[1:]
            if w.startswith("--") and w not in ran.stdout
        ]
    return problems


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.unit
def test_the_docs_have_shell_commands_in_every_file_that_shows_one() -> None:
    """The extraction finds the commands (a parser that finds none would pass all)."""
    files = {command.path for command in all_commands()}
    assert {"README.md", "docs/fakesmtp.md", "fakesmtp/README.md", "loadtests/README.md"} <= files
    assert len(all_commands()) > 50


@pytest.mark.unit
def test_every_fenced_block_names_its_language() -> None:
    """An unmarked block could hide a command from these checks."""
    unmarked = [
        f"{block.path}:{block.line - 1}: {block.language or '(none)'}"
        for block in all_blocks()
        if block.language not in SHELL_LANGUAGES | OTHER_LANGUAGES
    ]
    assert not unmarked, "mark each block sh, console, python, json, js or text:\n" + "\n".join(
        unmarked
    )


@pytest.mark.unit
def test_every_documented_command_is_run_checked_or_allowed() -> None:
    unknown = [str(command) for command in all_commands() if classify(command) == UNKNOWN]
    assert not unknown, "run, check or allow (ALLOWED, with a reason):\n" + "\n".join(unknown)
    stale = set(ALLOWED) - {command.key for command in all_commands()}
    assert not stale, f"ALLOWED names commands no doc has any more: {stale}"


@pytest.mark.unit
def test_no_doc_calls_an_interpreter_nothing_creates() -> None:
    """Issue 17: `.venv/bin/python` was documented and nothing made a .venv."""
    mentions = [
        f"{path}:{n}"
        for path in sorted(f for f in repo_files() if f.endswith(".md"))
        for n, line in enumerate((ROOT / path).read_text().splitlines(), 1)
        if ".venv/bin/" in line
    ]
    assert not mentions


@pytest.mark.unit
def test_nox_sessions_named_exist_and_their_arguments_fit() -> None:
    assert nox_sessions()[0], "no session found in noxfile.py"
    commands = commands_of(CHECK_NOX)
    assert commands
    problems = [p for command in commands for p in check_nox(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_pip_installs_name_this_repositorys_projects_and_extras() -> None:
    commands = commands_of(CHECK_PIP)
    assert commands
    problems = [p for command in commands for p in check_pip(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_exported_variables_are_read_by_the_service_and_valid_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands = commands_of(CHECK_ENV)
    assert commands
    problems = [p for command in commands for p in check_exports(command)]
    assert not problems, "\n".join(problems)
    # The values as a block sets them make valid settings (`...` stands for a secret).
    for path in {command.path for command in commands}:
        for name in settings_variables():
            monkeypatch.delenv(name, raising=False)
        for command in commands:
            if command.path == path:
                for word in command.argv[1:]:
                    name, _, value = word.partition("=")
                    monkeypatch.setenv(name, value)
        Settings()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("extra", "directory"), [("load", "loadtests/"), ("bench", "bench/")], ids=["load", "bench"]
)
def test_an_extra_is_enough_for_its_scripts(extra: str, directory: str) -> None:
    """What the scripts import (with the repository modules they import) is required by
    the service, fakesmtp or the extra: `pip install -e ./fakesmtp -e '.[load]'` runs
    loadtests/, with `.[bench]` bench/ (issue 17: `No module named 'httpx'`)."""
    project = pyproject(ROOT)["project"]
    provided = required(
        project["dependencies"]
        + project["optional-dependencies"][extra]
        + pyproject(ROOT / "fakesmtp")["project"]["dependencies"]
    )
    installed = importlib.metadata.packages_distributions()
    scripts = [ROOT / f for f in repo_files() if f.startswith(directory) and f.endswith(".py")]
    missing = {
        module
        for module in third_party_imports(scripts)
        if not {requirement_name(d) for d in installed.get(module, [module])} & provided
    }
    assert not missing


def required(requirements: list[str]) -> set[str]:
    """The requirements' names, with what their extras bring (uvicorn[standard]: uvloop)."""
    names = set()
    for text in requirements:
        requirement = Requirement(text)
        names.add(requirement_name(requirement.name))
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for dependency in map(Requirement, importlib.metadata.requires(requirement.name) or []):
                marker = dependency.marker
                if marker is not None and any(
                    "extra" in str(marker) and marker.evaluate({"extra": extra})
                    for extra in requirement.extras
                ):
                    names.add(requirement_name(dependency.name))
    return names


def third_party_imports(paths: list[Path]) -> set[str]:
    seen: set[Path] = set()
    found: set[str] = set()
    while paths:
        path = paths.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", "service", "fakesmtp"):
                    continue
                local = ROOT / (name.replace(".", "/") + ".py")
                if (ROOT / top).is_dir():
                    paths.append(local)
                else:
                    found.add(top)
    return found


@pytest.mark.e2e
def test_scripts_take_their_documented_arguments() -> None:
    commands = commands_of(CHECK_SCRIPT)
    assert commands
    problems = in_parallel(check_script, commands)
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_console_scripts_and_the_locustfile_are_there() -> None:
    commands = commands_of(CHECK_CONSOLE_SCRIPT) + commands_of(CHECK_LOCUST)
    assert commands
    problems = [
        p
        for command in commands
        for p in (
            check_console_script(command)
            if classify(command) == CHECK_CONSOLE_SCRIPT
            else check_locust(command)
        )
    ]
    assert not problems, "\n".join(problems)


def fakesmtp_argv(command: Command) -> tuple[list[str], dict[str, str]]:
    """The command with `python` and `fakesmtp` this environment's, and a taken
    documented port swapped for a free one; with the ports it should then print."""
    argv = command.argv
    head = [sys.executable] if argv[0].startswith("python") else [str(BIN / "fakesmtp")]
    args = argv[1:]
    expected = {}
    for option, default in FAKESMTP_DEFAULT_PORTS.items():
        given = option in args
        port = args[args.index(option) + 1] if given else default
        if port not in ("0", "auto") and port_taken(int(port)):
            port = str(free_port())
            if given:
                args[args.index(option) + 1] = port
            else:
                args += [option, port]
        expected[option] = port
    return head + args, expected


def run_fakesmtp(command: Command, cwd: Path) -> list[str]:
    argv, expected = fakesmtp_argv(command)
    with subprocess.Popen(
        argv, cwd=cwd, env=shell_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    ) as proc:
        try:
            line = read_line(proc.stdout, 20)
            started = FAKESMTP_LINE.search(line)
            if started is None:
                proc.kill()
                return [f"{command}: no start-up line, got {line!r}: {proc.communicate()[1]!r}"]
            ports = {"--port": started["smtp"], "--http-port": started["http"]}
            wrong = [
                f"{command}: {option} {port} but it printed {ports[option]}"
                for option, port in expected.items()
                if port not in ("0", "auto") and ports[option] != port
            ]
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
            code = proc.returncode
            return wrong + ([] if code == 0 else [f"{command}: exit {code} on SIGTERM"])
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.e2e
def test_fakesmtp_command_lines_and_one_liners_run(tmp_path: Path) -> None:
    """The one-liners first (docs/fakesmtp.md's makes the certificate the TLS line
    uses), then each fakesmtp line: one start-up line, exit 0 on SIGTERM."""
    one_liners = commands_of(RUN_ONE_LINER)
    assert one_liners
    problems = []
    for command in one_liners:
        ran = bash(command.text, tmp_path)
        if ran.returncode != 0:
            problems.append(f"{command}: exit {ran.returncode}:\n{ran.stderr}")
    command_lines = commands_of(RUN_FAKESMTP)
    assert command_lines
    # One after another: several use the default ports.
    problems += [p for command in command_lines for p in run_fakesmtp(command, tmp_path)]
    assert not problems, "\n".join(problems)


def curl_key(argv: list[str]) -> tuple[str, str]:
    """("METHOD /path", body kind) of a curl's words."""
    method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
    data = "-d" in argv
    if data and "-X" not in argv:
        method = "POST"
    path = urlsplit("http://" + curl_url(argv)).path
    headers = [argv[n + 1].lower() for n, w in enumerate(argv) if w == "-H"]
    form = data and "content-type: application/json" not in headers
    return f"{method} {path}", form and path.startswith("/send")


def run_curl(
    command: Command, port: int, env: dict[str, str], cwd: Path, last_id: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    text = command.text.replace("localhost:8000", f"localhost:{port}")
    text = text.replace("localhost:8025", f"localhost:{port}").replace("<id>", last_id)
    # The status goes to stderr, leaving the answer as the reader sees it (and jq gets it).
    text = re.sub(r"^curl ", "curl -w '%{stderr}%{http_code}' ", text)
    ran = bash(text, cwd, env)
    status = re.search(r"(\d{3})\s*$", ran.stderr)
    return ran, int(status.group(1)) if status else 0


def answered_id(body: str, last_id: str) -> str:
    with contextlib.suppress(ValueError):
        answer = json.loads(body)
        if isinstance(answer, dict):
            if isinstance(answer.get("id"), str):
                return answer["id"]
            listed = answer.get("results") or answer.get("messages") or []
            ids = [item["id"] for item in listed if isinstance(item, dict) and "id" in item]
            if ids:
                return ids[-1] if "results" in answer else ids[0]
    return last_id


@contextlib.contextmanager
def devserver(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`python -m service.devserver` on free ports (the README's `nox -s dev` runs it):
    its port and the key its banner exports."""
    output = tmp_path / "devserver.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.devserver",
                "--port=0",
                "--smtp-port=0",
                "--http-port=0",
                f"--database={tmp_path / 'dev.db'}",
            ],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops both" not in output.read_text():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        banner = output.read_text()
        url = re.search(r"mail service\s+http://127\.0\.0\.1:(\d+)", banner)
        key = re.search(r"export KEY=(\S+)", banner)
        assert url, banner
        assert key, banner
        yield int(url.group(1)), key.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
def test_the_readmes_api_curls_answer_as_documented(tmp_path: Path) -> None:
    exports = commands_of(RUN_EXPORT_KEY)
    assert [c.path for c in exports] == ["README.md"], exports
    key = exports[0].argv[1].partition("=")[2]
    curls = commands_of(RUN_SERVICE_CURL)
    assert curls
    # send_at at most 30 days ahead: a week from now, in the README's format.
    in_a_week = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    problems = []
    with devserver(tmp_path) as (port, banner_key):
        assert banner_key == key, "the README exports another key than the dev server's"
        env = shell_env(KEY=key)
        last_id = ""
        for command in curls:
            argv = command.argv
            route, form = curl_key(argv)
            route_key = f"{route} (form)" if form else route
            route_key = re.sub(r"/messages/[^/]+", "/messages/<id>", route_key)
            if route_key not in SERVICE_ANSWERS:
                problems.append(f"{command}: add its documented status to SERVICE_ANSWERS")
                continue
            dated = Command(
                command.path,
                command.line,
                re.sub(r'("send_at": ")[^"]+"', rf'\g<1>{in_a_week}"', command.text),
            )
            ran, status = run_curl(dated, port, env, tmp_path, last_id)
            if ran.returncode != 0 or status != SERVICE_ANSWERS[route_key]:
                problems.append(
                    f"{command}: exit {ran.returncode}, status {status}, expected "
                    f"{SERVICE_ANSWERS[route_key]}: {ran.stdout[:500]}"
                )
            last_id = answered_id(ran.stdout, last_id)
    assert not problems, "\n".join(problems)


@contextlib.contextmanager
def fakesmtp_server(cwd: Path) -> Iterator[tuple[int, int]]:
    """`python -m fakesmtp` on free ports: (SMTP port, HTTP port)."""
    with subprocess.Popen(
        [sys.executable, "-m", "fakesmtp", "--port", "0", "--http-port", "auto"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        bufsize=0,
    ) as proc:
        try:
            started = FAKESMTP_LINE.search(read_line(proc.stdout, 20))
            assert started, "fakesmtp did not start"
            yield int(started["smtp"]), int(started["http"])
        finally:
            proc.terminate()
            proc.communicate(timeout=15)


def send_mail(smtp_port: int, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = "ana@example.com"
    message["Subject"] = subject
    message.set_content("Hello")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        client.send_message(message)


def stream_events(command: Command, http_port: int, smtp_port: int, cwd: Path) -> list[str]:
    """The event stream: `ready` at once, a `message` event for a message sent while it
    is open, and every line the docs show that holds no `...`."""
    text = command.text.replace("localhost:8025", f"localhost:{http_port}")
    lines: list[str] = []
    with subprocess.Popen(
        ["bash", "-c", f"exec {text}"],
        cwd=cwd,
        env=shell_env(),
        stdout=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() then sees every line that is there
    ) as proc:
        try:
            deadline = time.monotonic() + 15
            sent = False
            while "event: message" not in lines and time.monotonic() < deadline:
                line = read_line(proc.stdout, 1)
                lines.append(line.rstrip("\n"))
                if line.startswith("event: ready") and not sent:
                    send_mail(smtp_port, "Welcome")
                    sent = True
        finally:
            proc.terminate()  # curl -N streams until stopped
            proc.communicate(timeout=10)
    documented = [x for x in command.output if x and "..." not in x]
    missing = [x for x in ["event: ready", "event: message", *documented] if x not in lines]
    return [f"{command}: no {missing} in {lines}"] if missing else []


@pytest.mark.e2e
def test_fakesmtps_api_curls_answer_as_documented(tmp_path: Path) -> None:
    curls = commands_of(RUN_FAKESMTP_CURL)
    assert curls
    problems = []
    with fakesmtp_server(tmp_path) as (smtp_port, http_port):
        send_mail(smtp_port, "Welcome")  # the docs read message 1
        for command in curls:
            route, _ = curl_key(command.argv)
            if any(re.fullmatch(r"-[a-zA-Z]*N[a-zA-Z]*", w) for w in command.argv):
                problems += stream_events(command, http_port, smtp_port, tmp_path)
                continue
            if route not in FAKESMTP_ANSWERS:
                problems.append(f"{command}: add its documented status to FAKESMTP_ANSWERS")
                continue
            ran, status = run_curl(command, http_port, shell_env(), tmp_path, "")
            if ran.returncode != 0 or status != FAKESMTP_ANSWERS[route]:
                problems.append(
                    f"{command}: exit {ran.returncode}, status {status}, expected "
                    f"{FAKESMTP_ANSWERS[route]}: {ran.stdout[:300]} {ran.stderr[:300]}"
                )
    assert not problems, "\n".join(problems)
