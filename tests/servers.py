"""Real Redis, PostgreSQL and NATS servers for the tests.

By default each test session starts its own throwaway servers from the binaries installed
on this machine, on free ports, with data in temporary directories, and stops them at the
end. Set ``CLARION_TEST_REDIS_URL`` / ``CLARION_TEST_POSTGRES_URL`` /
``CLARION_TEST_NATS_URL`` to use existing servers instead. A missing binary skips the
tests that need it, except under ``CI=true``, where it fails them: CI must not go green by
testing less.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest
import redis
from sqlalchemy.engine import make_url

from private_servers import nats_binary, start_nats, stop_process, wait_for_ping

T = TypeVar("T")

STARTUP_TIMEOUT = 15.0


def _missing(what: str) -> NoReturn:
    """Skip the test, or fail it under CI, where a missing server is a broken setup."""
    if os.environ.get("CI") == "true":
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- Redis -------------------------------------------------------------------------------


def _wait_for_redis(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll until the fresh server answers PING (server start-up, bounded)."""
    with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
        wait_for_ping(client, process)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis server for this session: ``CLARION_TEST_REDIS_URL``, or a private
    ``redis-server`` started here (no persistence) and stopped at the end."""
    env_url = os.environ.get("CLARION_TEST_REDIS_URL")
    if env_url:
        yield env_url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server not found on PATH; set CLARION_TEST_REDIS_URL to use a server")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="clarion-redis-") as tmp:
        args = [binary, "--save", "", "--appendonly", "no", "--dir", tmp]
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_redis(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A Redis URL whose database is empty at the start of the test. A server given by
    ``CLARION_TEST_REDIS_URL`` is used through db 15, to keep clear of anything else."""
    url = redis_server
    parts = urlsplit(url)
    if os.environ.get("CLARION_TEST_REDIS_URL") and parts.scheme in ("redis", "rediss"):
        url = parts._replace(path="/15").geturl()
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


# -- NATS ----------------------------------------------------------------------------------


@contextlib.contextmanager
def nats_process(port: int, store: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``nats-server -js`` on ``port`` keeping its JetStream store in ``store``, stopped
    (or killed, if it was not) at the end."""
    binary = nats_binary()
    if binary is None:
        _missing("nats-server not found on PATH; set CLARION_TEST_NATS_URL to use a server")
    process = start_nats(binary, port, store)
    try:
        yield process
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[str]:
    """The URL of a NATS server with JetStream for this session: ``CLARION_TEST_NATS_URL``,
    or a private ``nats-server -js`` started here (its store in a temporary directory) and
    stopped at the end."""
    env_url = os.environ.get("CLARION_TEST_NATS_URL")
    if env_url:
        yield env_url
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="clarion-nats-") as tmp, nats_process(port, tmp):
        yield f"nats://127.0.0.1:{port}"


async def _empty_nats(url: str) -> None:
    """Delete every stream (the key-value buckets are streams too)."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for name in await js.streams_info():
            await js.delete_stream(name.config.name)
    finally:
        await client.close()


@pytest.fixture
def nats_url(nats_server: str) -> str:
    """A NATS URL whose JetStream holds no stream at the start of the test."""
    run_async(_empty_nats(nats_server))
    return nats_server


# -- PostgreSQL ----------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: from PATH, else the newest
    Debian-style /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    candidates = [str(Path(found).resolve().parent)] if found else []

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all((Path(directory) / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def _as_postgres_user(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    if runuser is None:
        _missing("running as root and runuser not found: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--", *args]


def _run(args: list[str], cwd: str) -> None:
    result = subprocess.run(
        _as_postgres_user(args), cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


# Where a private server keeps its data: in memory where the machine has a tmpfs for it.
# Every test's database is a copy of a template, hundreds of files made at once; on a disk
# that took 0.3 s of each test's set-up (file creation on ext4), in memory 0.04 s.
_MEMORY = Path("/dev/shm")


def _private_dir() -> str:
    """A 0700 temporary directory owned by whoever will run the server: in memory when the
    machine has /dev/shm, else in /tmp."""
    memory = _MEMORY.is_dir() and os.access(_MEMORY, os.W_OK | os.X_OK)
    path = tempfile.mkdtemp(prefix="clarion-pg-", dir=str(_MEMORY) if memory else "/tmp")
    if os.geteuid() == 0:
        shutil.chown(path, user="postgres", group="postgres")
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The SQLAlchemy URL of a PostgreSQL server's ``postgres`` database for this session:
    ``CLARION_TEST_POSTGRES_URL``, or a private server (trust auth, no fsync) started here
    and stopped at the end."""
    env_url = os.environ.get("CLARION_TEST_POSTGRES_URL")
    if env_url:
        yield env_url
        return
    bindir = _pg_bindir()
    if bindir is None:
        _missing(
            "PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; set CLARION_TEST_POSTGRES_URL to use a server"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no postgres OS user to run PostgreSQL")
    port = _free_port()
    tmp = _private_dir()
    data = str(Path(tmp) / "data")
    pg_ctl = str(bindir / "pg_ctl")
    try:
        initdb = [str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"]
        _run([*initdb, "--no-sync", "-E", "UTF8", "--locale=C"], cwd=tmp)
        options = (
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            # Each copy of the template writes its pages to the WAL: recycle it early, so
            # that a session's server holds little of it (in memory, above).
            "-c max_wal_size=128MB -c min_wal_size=32MB"
        )
        # -l: the server must not inherit our output pipes, or the call never returns.
        log = str(Path(tmp) / "postgres.log")
        _run([pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "30", "start"], cwd=tmp)
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([pg_ctl, "-D", data, "stop", "-m", "immediate", "-w"], cwd=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, on its own thread and event loop, so
    the test's event loop (and the current-loop setting pytest-asyncio relies on) is left
    alone."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def admin(server_url: str, statement: str) -> None:
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_url(pg_server: str) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database on ``pg_server``, dropped afterwards."""
    name = f"clarion_test_{uuid.uuid4().hex[:16]}"
    run_async(admin(pg_server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        run_async(admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
