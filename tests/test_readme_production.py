"""The README's production commands, taken from the README itself, against throwaway
PostgreSQL and Redis: the set-up lines run in bash as written (the database and broker
URLs pointed at the test's servers; installing and ``createdb`` are what the test
environment already did), the roles start as their own processes, and a notification
sent through the API is delivered."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import Procs, free_port, wait_ready, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(r"clarion (api|worker|scheduler)\s*&")


def production_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Production", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split(" #", 1)[0].strip() for line in block.splitlines()]


def split_block(database_url: str, redis_url: str) -> tuple[str, list[str]]:
    """The set-up script (bash) and the roles to start."""
    setup, roles = [], []
    for line in production_block():
        if not line or line.startswith("#"):
            continue
        if line.startswith(("./scripts/uv.sh sync", "createdb ")):
            continue  # done by the test environment: Clarion installed, the database made
        role = ROLE.fullmatch(line)
        if role:
            roles.append(role.group(1))
            continue
        for name, url in (("DATABASE", database_url), ("BROKER", redis_url)):
            line = re.sub(
                rf"^export CLARION_{name}_URL=\S+$", f"export CLARION_{name}_URL={url}", line
            )
        setup.append(line)
    script = "\n".join(setup)
    assert f"CLARION_DATABASE_URL={database_url}" in script
    assert f"CLARION_BROKER_URL={redis_url}" in script
    assert "CLARION_SECRET_KEY" in script
    return script, roles


async def test_readme_production_commands_deliver(
    postgres_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    script, roles = split_block(postgres_url, redis_url)
    assert roles == ["api", "worker", "scheduler"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CLARION_HTTP_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    envfile = tmp_path / "env"
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", f'{script}\nenv -0 > "{envfile}"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    keys = [line for line in done.stdout.splitlines() if line.startswith("ck_")]
    assert len(keys) == 2, done.stdout
    assert "webhook signing secret: whsec_" in done.stdout
    role_env = dict(item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item)
    started = {role: procs.start(role, [role], role_env) for role in roles}
    auth = {"Authorization": f"Bearer {keys[0]}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await wait_ready(client, started["api"])
        template = {"channels": {"email": {"subject": "Hi", "text": "Hello {{ name }}"}}}
        put = await client.put("/v1/templates/hello", json=template, headers=auth)
        assert put.is_success, put.text
        who = {"email": "alex@example.com"}
        assert (await client.put("/v1/recipients/u-1", json=who, headers=auth)).is_success
        body = {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"name": "Alex"}}
        sent = await client.post("/v1/notifications", json=body, headers=auth)
        assert sent.status_code == 202, sent.text
        nid = sent.json()["id"]

        async def delivered() -> bool:
            note = (await client.get(f"/v1/notifications/{nid}", headers=auth)).json()
            return [d["status"] for d in note.get("deliveries", [])] == ["sent"]

        await wait_until(delivered, 60, "the notification to be sent", 0.2, procs.report)
    # Each role says once it is up; the scheduler may say so after the send went through
    # (nothing here waited for it).
    for role, proc in started.items():

        async def ready(proc: Any = proc) -> bool:
            return "INFO clarion: ready: " in proc.output(100_000)

        await wait_until(ready, 60, f"the {role}'s ready line", 0.2, procs.report)
