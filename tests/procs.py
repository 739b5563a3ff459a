"""Clarion as real subprocesses, for tests that kill and restart them.

Each process runs ``python -m clarion.cli <role>`` with the interpreter running the tests,
its output going to a log file (so a full pipe never blocks it, and a failing test can show
what it said). ``Procs`` remembers every process it started and stops them all in
``close()``: SIGTERM first, SIGKILL for any still alive after a grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "clarion.cli"]
TEST_SECRET_KEY = "Y2xhcmlvbi10ZXN0cy1zZWNyZXQta2V5LTMyLWJ5dGU="  # 32 bytes, tests only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clarion_env(
    database_url: str, broker_url: str, **settings: str | float | int
) -> dict[str, str]:
    """The environment of a Clarion process: this one without any ``CLARION_*`` variable,
    plus the database, the broker and ``settings`` (``http_port=8080`` → ``CLARION_HTTP_PORT``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["CLARION_DATABASE_URL"] = database_url
    env["CLARION_BROKER_URL"] = broker_url
    # Roles on PostgreSQL refuse to start without a secret key.
    env["CLARION_SECRET_KEY"] = TEST_SECRET_KEY
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[f"CLARION_{name.upper()}"] = str(value)
    return env


def create_tenant(env: dict[str, str], name: str) -> str:
    """Run ``clarion tenants create NAME`` (migrating the database) and return the API key,
    the last line it prints. Blocking: call it through ``asyncio.to_thread`` from async code."""
    result = subprocess.run(
        [*CLI, "tenants", "create", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"clarion tenants create failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1].strip()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:]

    async def kill9(self) -> None:
        """SIGKILL: no shutdown, no drain, nothing flushed. Returns once it is gone."""
        self.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.popen.wait, 10)


@dataclass
class Procs:
    """Starts Clarion processes and guarantees they are all stopped in ``close()``."""

    logs: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*CLI, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def report(self) -> str:
        """Every process's state and the end of its log (for assertion messages)."""
        parts = []
        for proc in self.started:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.name} (pid {proc.pid}, {state}) ---\n{proc.output()}")
        return "\n".join(parts)

    def close(self, grace: float = 8.0) -> None:
        """SIGTERM every live process, wait up to ``grace`` seconds, SIGKILL the rest."""
        for proc in self.started:
            if proc.alive():
                proc.popen.terminate()
        deadline = time.monotonic() + grace
        for proc in self.started:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` every ``interval`` seconds until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        await asyncio.sleep(interval)


async def wait_ready(client: httpx.AsyncClient, proc: Proc, timeout: float = 30.0) -> None:
    """Poll ``/readyz`` until it answers 200 (a bounded poll); fail early if ``proc`` exits."""

    async def ready() -> bool:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}"
            )
        try:
            response = await client.get("/readyz", timeout=2.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    await wait_until(ready, timeout, f"{proc.name} to be ready", explain=proc.output)
