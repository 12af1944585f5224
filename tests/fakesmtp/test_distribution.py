"""fakesmtp is a distribution of its own: installed alone into a fresh virtualenv, with
nothing of the mail service, it captures mail, serves its page and API, waits on its
event stream and runs its CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# Run by the fresh virtualenv's Python, from a directory outside the repository.
ALONE = textwrap.dedent(
    """
    import importlib, importlib.util, json, pkgutil, smtplib, subprocess, sys, urllib.request
    from pathlib import Path

    import fakesmtp
    from fakesmtp import FakeSMTPServer
    from fakesmtp.client import FakeSMTPClient

    assert "site-packages" in fakesmtp.__file__, fakesmtp.__file__
    service_parts = ["service", "fastapi", "sqlalchemy", "alembic", "psycopg", "pydantic"]
    present = [name for name in service_parts if importlib.util.find_spec(name)]
    assert present == [], present
    for module in pkgutil.walk_packages(fakesmtp.__path__, "fakesmtp."):
        if module.name not in ("fakesmtp.pytest_plugin", "fakesmtp.__main__"):
            importlib.import_module(module.name)  # each module, with nothing of the service

    with FakeSMTPServer(port=0, http_port=0) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as client:
            message = b"Subject: alone\\r\\n\\r\\nhi\\r\\n"
            client.sendmail("a@example.com", ["b@example.com"], message)
        with FakeSMTPClient(smtp.http_url) as api:
            assert api.wait_for(lambda m: m.subject == "alone", timeout=5).subject == "alone"

        def get(path):
            with urllib.request.urlopen(smtp.http_url + path, timeout=5) as response:
                return response.read()

        assert json.loads(get("/api/v1/messages"))["total"] == 1
        assert b"/static/app.js" in get("/")
        assert b"EventSource" in get("/static/app.js")  # package data is in the wheel

    cli = Path(sys.executable).with_name("fakesmtp")
    help_text = subprocess.run([cli, "--help"], capture_output=True, text=True, check=True)
    assert "--http-port" in help_text.stdout
    print("ok")
    """
)


def install_alone(venv: Path) -> Path:
    """A fresh virtualenv with ./fakesmtp installed (not editable) and nothing else."""
    uv = shutil.which("uv")
    if uv is not None:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, venv], check=True)
        python = venv / "bin" / "python"
        install = [uv, "pip", "install", "-q", "--python", python]
    else:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = venv / "bin" / "python"
        install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # From a copy: building in place would leave build/ and *.egg-info in the package.
    source = venv.parent / "fakesmtp-source"
    shutil.copytree(
        ROOT / "fakesmtp",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
    )
    subprocess.run([*install, source], check=True, timeout=600)
    return python


@pytest.mark.timeout(600)
def test_fakesmtp_installs_and_works_without_the_service(tmp_path: Path) -> None:
    python = install_alone(tmp_path / "venv")
    script = tmp_path / "alone.py"
    script.write_text(ALONE)
    run = subprocess.run(
        [python, script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
