"""Packaging conventions and the production start's refusals, through the real command."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import clarion
from procs import clarion_env

PYTHON = sys.executable


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_version_has_one_source() -> None:
    assert importlib.metadata.version("clarion") == clarion.__version__
    done = run("-m", "clarion", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"clarion {clarion.__version__}"


def test_package_is_typed() -> None:
    assert (Path(clarion.__file__).parent / "py.typed").is_file()


def test_older_python_gets_a_clear_error() -> None:
    code = "import sys; sys.version_info = (3, 10, 12, 'final', 0); import clarion"
    done = run("-c", code)
    assert done.returncode != 0
    assert "Clarion needs Python 3.11 or newer; this is Python 3.10.12" in done.stderr


def test_roles_on_postgres_refuse_to_start_without_a_secret_key() -> None:
    # Nothing listens there: the refusal comes before any connection.
    env = clarion_env("postgresql+asyncpg://nobody@127.0.0.1:9/none", "redis://127.0.0.1:9/0")
    del env["CLARION_SECRET_KEY"]
    for role in ("api", "worker", "scheduler", "serve"):
        done = run("-m", "clarion", role, env=env)
        assert done.returncode == 2, (role, done.stderr)
        assert "needs CLARION_SECRET_KEY" in done.stderr
        assert "clarion secret generate" in done.stderr
