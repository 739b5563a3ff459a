"""Memory of the API process under bursts of large batch requests.

Starts ``clarion api`` alone on a fresh SQLite file with a private Redis as its broker (no
worker: what is accepted waits in Redis, so the process measured only serves HTTP), then
sends ``--rounds`` bursts of ``--burst`` concurrent notification batches of about ``--kib``
KiB each (1,000 notifications, their ``data`` padded), and reads the process's resident
memory (VmRSS) before, after each burst and after ``--idle`` seconds without requests.
Prints one JSON object; progress goes to stderr. ``CLARION_HTTP_LARGE_BODIES`` in the
environment sets how many large bodies the API handles at once.

    uv run python benchmarks/api_memory.py --rounds 3 --burst 20 --kib 507
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from e2e import STARTUP_TIMEOUT, Children, clarion, free_port, log, machine


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="clarion-mem-"))
    children = Children(tmp)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    redis_port = free_port()
    children.start(
        "redis",
        ["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(tmp)],
        dict(os.environ),
    )
    env = dict(os.environ)
    env.update(
        CLARION_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'clarion.db'}",
        CLARION_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CLARION_HTTP_HOST="127.0.0.1",
        CLARION_HTTP_PORT=str(port),
        CLARION_LOG_LEVEL="warning",
    )
    try:
        created = await asyncio.create_subprocess_exec(
            *clarion("tenants", "create", "mem"), env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await created.communicate()
        key = out.decode().strip().splitlines()[-1]
        child = children.start("api", clarion("api"), env)
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                children.check()
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("clarion api did not start")
                await asyncio.sleep(0.2)

            async def call(method: str, path: str, body: Any) -> None:
                async with session.request(
                    method, base + path, data=orjson.dumps(body), headers=headers
                ) as response:
                    text = await response.read()
                    if response.status >= 300:
                        raise RuntimeError(f"{path}: HTTP {response.status}: {text[:300]!r}")

            template = {"channels": {"email": {"subject": "Hi", "text": "{{ n }}"}}}
            await call("PUT", "/v1/templates/mem", template)
            people = [{"id": f"r{i}", "email": f"r{i}@example.com"} for i in range(100)]
            await call("POST", "/v1/recipients/batch", {"recipients": people})
            pad = "x" * max(0, args.kib * 1024 // 1000 - 120)
            sequence = 0

            def batch() -> dict[str, Any]:
                nonlocal sequence
                sequence += 1
                return {
                    "notifications": [
                        {
                            "template": "mem",
                            "to": {"recipient_id": f"r{i % 100}"},
                            "data": {"n": i, "pad": pad},
                            "idempotency_key": f"{sequence}-{i}",
                        }
                        for i in range(1000)
                    ]
                }

            size = len(orjson.dumps(batch())) / 1024
            pid = child.popen.pid
            samples = {"before": rss_mib(pid)}
            log(f"batch of {size:.0f} KiB; before: {samples['before']:.0f} MiB")
            burst_seconds = []
            for round_ in range(args.rounds):
                started = time.monotonic()
                await asyncio.gather(
                    *(call("POST", "/v1/notifications/batch", batch()) for _ in range(args.burst))
                )
                burst_seconds.append(round(time.monotonic() - started, 2))
                samples[f"after_burst_{round_ + 1}"] = rss_mib(pid)
                log(f"after burst {round_ + 1}: {samples[f'after_burst_{round_ + 1}']:.0f} MiB")
            await asyncio.sleep(args.idle)
            samples["after_idle"] = rss_mib(pid)
            log(f"after {args.idle:g}s idle: {samples['after_idle']:.0f} MiB")
        return {
            "benchmark": "api_memory",
            "batch_kib": round(size),
            "burst": args.burst,
            "rounds": args.rounds,
            "rss_mib": {name: round(value, 1) for name, value in samples.items()},
            "burst_seconds": burst_seconds,
            "large_bodies": os.environ.get("CLARION_HTTP_LARGE_BODIES", "default"),
            "machine": machine(),
        }
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--kib", type=int, default=507)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
