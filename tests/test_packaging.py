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


# What the command's own answers must not load: each of these costs from tens to hundreds
# of milliseconds, and together they made `clarion --version` take seconds.
HEAVY = (
    "aiosqlite",
    "asyncpg",
    "botocore",
    "cryptography",
    "fastapi",
    "httpx",
    "jinja2",
    "pydantic",
    "redis",
    "rich",
    "sqlalchemy",
    "structlog",
    "uvicorn",
    "yaml",
    "clarion.config",
    "clarion.pipeline",
    "clarion.store",
)

# Runs the command as `python -m clarion` does, then names the heavy modules it loaded.
IMPORTED_BY = """
import runpy, sys
sys.argv = ["clarion", *sys.argv[1:]]
try:
    runpy.run_module("clarion", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = {heavy!r}
print(" ".join(sorted(name for name in heavy if name in sys.modules)))
"""


def test_version_and_help_import_nothing_heavy() -> None:
    for flag in ("--version", "--help"):
        done = run("-c", IMPORTED_BY.format(heavy=HEAVY), flag)
        assert done.returncode == 0, done.stderr
        assert "clarion" in done.stdout
        assert done.stdout.splitlines()[-1] == "", (flag, done.stdout.splitlines()[-1])


def test_package_is_typed() -> None:
    assert (Path(clarion.__file__).parent / "py.typed").is_file()


def test_older_python_gets_a_clear_error() -> None:
    code = "import sys; sys.version_info = (3, 10, 12, 'final', 0); import clarion"
    done = run("-c", code)
    assert done.returncode != 0
    assert "Clarion needs Python 3.11 or newer; this is Python 3.10.12" in done.stderr


def test_roles_on_nats_refuse_to_start_without_a_redis_for_shared_state() -> None:
    # Nothing listens there: the refusal comes before any connection.
    env = clarion_env("postgresql+asyncpg://nobody@127.0.0.1:9/none", "nats://127.0.0.1:9")
    env.pop("CLARION_REDIS_URL", None)
    for role in ("api", "worker", "scheduler"):
        done = run("-m", "clarion", role, env=env)
        assert done.returncode == 2, (role, done.stderr)
        assert "with the NATS broker needs CLARION_REDIS_URL" in done.stderr


def test_roles_on_postgres_refuse_to_start_without_a_secret_key() -> None:
    # Nothing listens there: the refusal comes before any connection.
    env = clarion_env("postgresql+asyncpg://nobody@127.0.0.1:9/none", "redis://127.0.0.1:9/0")
    del env["CLARION_SECRET_KEY"]
    for role in ("api", "worker", "scheduler", "serve"):
        done = run("-m", "clarion", role, env=env)
        assert done.returncode == 2, (role, done.stderr)
        assert "needs CLARION_SECRET_KEY" in done.stderr
        assert "clarion secret generate" in done.stderr
