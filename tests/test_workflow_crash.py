"""Crash tests for workflow runs: kill -9 the processes that advance runs and send their
steps, while runs wait in a delay and while channel steps are being planned and sent;
start them again; check that every run completed once and no step was sent twice.

A workflow of four steps (webhook → 5 s delay → webhook → webhook, if the first step was
not skipped; the middle notification's through the same steps with a last one that reads
no step, so that its delay is walked ahead of its end), sent in one batch to 300
recipients (three notifications of 100), runs on
real processes (``procs.py``): on PostgreSQL + Redis an API, a worker (the planner, which
stores and advances runs, and the webhook channel) and a scheduler; on SQLite the single
``clarion serve``. Three times, processes are killed with SIGKILL and started again:

1. the worker and the scheduler (or ``serve``), while the first step is being sent and
   the runs wait in their delay;
2. the worker (or ``serve``) as soon as the second step's deliveries are being stored:
   the planner that woke the runs dies while it advances them, their lease held (a run is
   saved once it has gone as far as it goes, after its steps' deliveries are stored);
3. the worker and the scheduler (or ``serve``), while the second and last steps are
   being sent.

The runs' lease is short (``CLARION_WORKFLOW_RUN_LEASE``), so those a killed planner held
are taken again within seconds rather than a minute.

At the end every run is ``completed`` with its four steps, each channel step holding the
one delivery whose id derives from (notification, recipient, step, channel), and no other
delivery exists; every delivery is ``sent``; every (recipient, step) reached the sink, and
every copy carries that delivery's id as its ``Idempotency-Key``. That is the rule of the
other crash tests (test_crash.py): at-least-once, so a send in flight at a kill may arrive
again, but only ever as the same delivery, never as a second one. Nothing waits a fixed
time: each kill is triggered by the sink's or the database's counts, and the end found by
polling them against a deadline.

A planner that dies between storing a step's deliveries and publishing them is also
played in this process, exactly: the run taken again publishes them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clarion.domain.delivery import Stored
from clarion.domain.ids import delivery_id
from clarion.pipeline.planner import Planner
from clarion.store.tables import deliveries, workflow_runs
from harness import Harness, make_settings, running
from procs import Proc, Procs, clarion_env, create_tenant, free_port, wait_ready, wait_until
from webhook_sink import WebhookSink

NOTES = 3
RECIPIENTS = 300
# The channel steps, each with a template of its own whose body names it.
SENT = ("first", "second", "last")
STEPS = [
    {"id": "first", "type": "channel", "channel": "webhook", "template": "first"},
    {"id": "pause", "type": "delay", "duration": "5s"},
    {"id": "second", "type": "channel", "channel": "webhook", "template": "second"},
    {"id": "last", "type": "channel", "channel": "webhook", "template": "last",
     "if": "steps.first.status != 'skipped'"},
]  # fmt: skip
# The same steps with a last step that reads no step: the delay is walked ahead of its end
# (CLARION_WORKFLOW_WAKE_AHEAD), its next steps' deliveries made before it ends and
# scheduled for the end. The middle notification goes through it, the others through STEPS
# (woken at the delay's end), so the kills meet runs on both paths.
AHEAD = [*STEPS[:3], {**STEPS[3], "if": "recipient.id != ''"}]
# No `first_success` step: a run waiting on its delivery looks at it again after as long
# as it has waited (up to a minute), so when it went on would depend on how long the kills
# held its delivery up, not on whether it was sent.

# A kill comes once this many more webhooks have arrived.
KILL_AT = RECIPIENTS // 3
# A kill, or the end, that has not come by then never will. Each waits on processes
# starting (seconds each on a busy machine), the runs' lease, the attempts' claims of a
# killed worker (twice the webhook timeout plus the broker's lease), and the sweeper.
DEADLINE = 90.0
# Sends are slowed (eight at once, each answered after a moment) so that sending a step
# takes a second or more and a kill lands part-way through it.
SINK_DELAY = 0.05
FAST = {
    "allow_private_webhooks": "true",
    "broker_lease": 2,
    "sweep_after": 5,
    "outbox_grace": 2,
    "workflow_run_lease": 2,
    "webhook_timeout": 2,
    "worker_concurrency": 8,
    "worker_tenant_share": 1.0,
    "worker_endpoint_share": 1.0,
    "log_level": "WARNING",
    "shutdown_timeout": 3,
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def slow_sink(sink: WebhookSink) -> WebhookSink:
    sink.delay = SINK_DELAY
    return sink


@dataclass
class Crew:
    """The processes a test kills and starts again, by role: ``roles`` gives each one's
    command line, ``planners`` those that advance runs."""

    procs: Procs
    env: dict[str, str]
    roles: dict[str, list[str]]
    planners: tuple[str, ...]
    running: dict[str, Proc] = field(default_factory=dict)
    generation: int = 0

    def start(self, names: Sequence[str]) -> None:
        self.generation += 1
        for name in names:
            proc = self.procs.start(f"{name}-{self.generation}", self.roles[name], self.env)
            self.running[name] = proc

    async def kill(self, names: Sequence[str]) -> None:
        await asyncio.gather(*(self.running[name].kill9() for name in names))


@dataclass
class Flow:
    """What one test drives: the API, the sink, the database and the crew; and what it
    saw at each kill."""

    port: int
    key: str
    sink: WebhookSink
    engine: AsyncEngine
    crew: Crew
    kills: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def prepare_and_submit(self, api: Proc) -> None:
        """Recipients, templates and the workflow; then the workflow sent in one batch."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            await wait_ready(client, api, timeout=60)
            people = [
                {"id": f"r{n:03d}", "webhook_url": f"{self.sink.url}/r{n:03d}"}
                for n in range(RECIPIENTS)
            ]
            await self._call(client, "POST", "/v1/recipients/batch", {"recipients": people})
            for name in SENT:
                webhook = {"body": {"step": name, "to": "{{ recipient.id }}"}}
                template = {"channels": {"webhook": webhook}}
                await self._call(client, "PUT", f"/v1/templates/{name}", template)
            await self._call(client, "PUT", "/v1/workflows/crash", {"name": "c", "steps": STEPS})
            ahead = {"name": "a", "steps": AHEAD}
            await self._call(client, "PUT", "/v1/workflows/crash_ahead", ahead)
            shares = [[f"r{n:03d}" for n in range(k, RECIPIENTS, NOTES)] for k in range(NOTES)]
            items = [
                {"workflow": "crash_ahead" if k == 1 else "crash", "to": {"recipient_ids": ids}}
                for k, ids in enumerate(shares)
            ]
            body = {"notifications": items}
            results = await self._call(client, "POST", "/v1/notifications/batch", body)
        assert [r.get("status") for r in results["results"]] == ["accepted"] * NOTES, results
        self.notes = [r["id"] for r in results["results"]]

    async def _call(
        self, client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]
    ) -> Any:
        response = await client.request(method, path, json=body, headers=self.auth, timeout=60)
        assert response.status_code in (200, 201, 202), response.text
        return response.json()

    def arrived(self) -> dict[tuple[str, str], list[str]]:
        """(recipient, step) → the Idempotency-Key of every copy the sink answered."""
        copies: dict[tuple[str, str], list[str]] = defaultdict(list)
        for request in self.sink.received:
            body = json.loads(request.body)
            copies[(body["to"], body["step"])].append(request.headers["idempotency-key"])
        return copies

    def at_sink(self) -> Counter[str]:
        """Of each step, how many recipients' webhooks have arrived."""
        return Counter(step for _, step in self.arrived())

    async def where_runs_are(self) -> Counter[str]:
        """Runs by status and the step they are at (``waiting@pause``, ``completed``), and
        how many are waiting for their delay to end (``in delay``)."""
        r = workflow_runs
        now = datetime.now(UTC).timestamp()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(r.c.status, r.c.step, r.c.steps))).all()
        found: Counter[str] = Counter()
        for status, step, records in rows:
            at = STEPS[step]["id"] if step < len(STEPS) else None
            found[f"{status}@{at}" if at else status] += 1
            until = records[-1].get("until") if records and at == "pause" else None
            found["in delay"] += until is not None and until > now
        return found

    async def next_wakes(self) -> list[float]:
        """In how many seconds the first and the last run that have not ended are due
        (for a failure's message)."""
        r = workflow_runs
        query = select(func.min(r.c.wake_at), func.max(r.c.wake_at)).where(
            r.c.status.in_(("running", "waiting"))
        )
        async with self.engine.connect() as conn:
            first, last = (await conn.execute(query)).one()
        now = datetime.now(UTC)
        return [
            round((moment.replace(tzinfo=moment.tzinfo or UTC) - now).total_seconds(), 1)
            for moment in (first, last)
            if moment is not None
        ]

    async def delivery_statuses(self) -> dict[str, int]:
        query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
        async with self.engine.connect() as conn:
            return {status: n for status, n in (await conn.execute(query)).all()}

    def explain(self) -> str:
        report = self.crew.procs.report()
        return f"at the sink: {dict(self.at_sink())}; kills: {self.kills}\n{report}"

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        await wait_until(check, DEADLINE, what, 0.02, self.explain)

    async def kill(self, phase: str, names: Sequence[str]) -> dict[str, Any]:
        """kill -9 these processes of the crew at once, and start them again; note where
        the runs, the deliveries and the sink stood."""
        await self.crew.kill(names)
        seen = {
            "phase": phase,
            "killed": list(names),
            "at": round(time.monotonic() - self.started, 1),
            "sink": dict(self.at_sink()),
            "runs": dict(await self.where_runs_are()),
            "deliveries": sum((await self.delivery_statuses()).values()),
        }
        self.kills.append(seen)
        self.crew.start(names)
        return seen

    async def check_completed(self, api: Proc) -> dict[str, Any]:
        """Wait until every run is completed, every step at the sink and every delivery
        sent; then check that each run made one delivery a step, sent as itself."""
        total = RECIPIENTS * len(SENT)
        state: dict[str, Any] = {}

        async def done() -> bool:
            state["runs"] = dict(await self.where_runs_are())
            state["deliveries"] = await self.delivery_statuses()
            state["due in"] = await self.next_wakes()
            return (
                state["runs"].get("completed") == RECIPIENTS
                and state["deliveries"] == {"sent": total}
                and len(self.arrived()) == total
            )

        def why() -> str:
            return f"{state}\n{self.explain()}"

        await wait_until(done, DEADLINE, "every run completed, every step sent", 0.2, why)
        finished = round(time.monotonic() - self.started, 1)
        async with self.engine.connect() as conn:
            runs = [dict(row) for row in (await conn.execute(select(workflow_runs))).mappings()]
            made = set((await conn.execute(select(deliveries.c.id))).scalars())
        assert len(runs) == RECIPIENTS
        assert {run["notification_id"] for run in runs} == set(self.notes)
        expected: dict[tuple[str, str], str] = {}
        for run in runs:
            assert run["status"] == "completed", run
            assert [s["id"] for s in run["steps"]] == [s["id"] for s in STEPS], run
            for step in run["steps"]:
                assert step.get("ended_at") is not None, run
                if step["id"] in SENT:
                    nid, rid = run["notification_id"], run["recipient_id"]
                    mine = delivery_id(nid, rid, f"{step['id']}/webhook")
                    assert step["deliveries"] == [mine], run
                    expected[(rid, step["id"])] = mine
        assert made == set(expected.values())
        arrived = self.arrived()
        assert arrived.keys() == expected.keys()
        wrong = {pair: keys for pair, keys in arrived.items() if set(keys) != {expected[pair]}}
        assert not wrong, f"a step sent as another delivery: {list(wrong.items())[:5]}"
        repeats = sum(len(keys) - 1 for keys in arrived.values())
        await self.check_shown(api)
        return {"finished": finished, "repeats": repeats, "kills": self.kills}

    async def check_shown(self, api: Proc) -> None:
        """The API shows each notification completed, its runs and deliveries with it."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            await wait_ready(client, api, timeout=60)
            for nid in self.notes:
                response = await client.get(f"/v1/notifications/{nid}", headers=self.auth)
                assert response.status_code == 200, response.text
                note = response.json()
                assert note["status"] == "completed", note["status"]
                assert note["run_totals"] == {"completed": RECIPIENTS // NOTES}
                assert note["totals"] == {"sent": RECIPIENTS // NOTES * len(SENT)}


async def crash_through(flow: Flow) -> None:
    """The three kills, each followed by new processes in the place of those killed."""
    everyone = list(flow.crew.roles)

    async def first_under_way() -> bool:
        return flow.at_sink()["first"] >= KILL_AT

    await flow.until(first_under_way, f"{KILL_AT} of the first step at the sink")
    seen = await flow.kill("first being sent, runs in their delay", everyone)
    assert seen["sink"]["first"] < RECIPIENTS, "the first step was all sent before the kill"
    assert seen["runs"]["in delay"] > 0, "no run was in its delay at the kill"

    async def second_being_planned() -> bool:
        # The runs walked ahead made their later steps' deliveries with the first's.
        ahead = 2 * (RECIPIENTS // NOTES)
        return sum((await flow.delivery_statuses()).values()) > RECIPIENTS + ahead

    await flow.until(second_being_planned, "the second step's deliveries")
    seen = await flow.kill("second being planned", flow.crew.planners)
    before = seen["sink"].get("second", 0) + seen["sink"].get("last", 0)

    async def later_under_way() -> bool:
        counts = flow.at_sink()
        return counts["second"] + counts["last"] >= before + KILL_AT

    await flow.until(later_under_way, f"{KILL_AT} more of the later steps at the sink")
    seen = await flow.kill("second and last being sent", everyone)
    later = seen["sink"].get("second", 0) + seen["sink"].get("last", 0)
    assert later < 2 * RECIPIENTS, "the later steps were all sent before the kill"


@pytest.mark.postgres
@pytest.mark.redis
async def test_worker_and_scheduler_killed_through_workflow_runs_on_postgres_and_redis(
    postgres_url: str, redis_url: str, slow_sink: WebhookSink, procs: Procs
) -> None:
    port = free_port()
    env = clarion_env(postgres_url, redis_url, http_port=port, **FAST)
    key = await asyncio.to_thread(create_tenant, env, "runs")
    api = procs.start("api", ["api"], env)
    roles = {"worker": ["worker", "--channels", "webhook"], "scheduler": ["scheduler"]}
    crew = Crew(procs, env, roles, planners=("worker",))
    flow = Flow(port, key, slow_sink, create_async_engine(postgres_url), crew)
    try:
        crew.start(list(roles))
        await flow.prepare_and_submit(api)
        await crash_through(flow)
        print(f"postgres+redis: {await flow.check_completed(api)}")
    finally:
        await flow.engine.dispose()


async def test_serve_killed_through_workflow_runs_on_sqlite(
    tmp_path: Path, slow_sink: WebhookSink, procs: Procs
) -> None:
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'clarion.db'}"
    env = clarion_env(database_url, "embedded://", http_port=port, **FAST)
    key = await asyncio.to_thread(create_tenant, env, "runs")
    crew = Crew(procs, env, {"serve": ["serve"]}, planners=("serve",))
    flow = Flow(port, key, slow_sink, create_async_engine(database_url), crew)
    try:
        crew.start(["serve"])
        await flow.prepare_and_submit(crew.running["serve"])
        await crash_through(flow)
        print(f"sqlite+embedded: {await flow.check_completed(crew.running['serve'])}")
    finally:
        await flow.engine.dispose()


@pytest.fixture
async def short_lease(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion in this process with every role, runs leased for a second."""
    async with running(make_settings(*backend, workflow_run_lease=1.0)) as harness:
        yield harness


async def test_a_step_stored_by_a_planner_that_died_before_publishing_it_is_sent(
    short_lease: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner advancing a run stores a channel step's deliveries, then dies before
    publishing them (here: the broker is out of reach, once; an outage leaves the run to
    its lease, as a death does). The run is taken again when its lease ends and finds the
    step's deliveries stored: it publishes them again, rather than leaving them to the
    sweeper (``CLARION_SWEEP_AFTER``, five minutes by default)."""
    app = short_lease
    await app.put_template("note", {"channels": {"inapp": {"title": "t", "body": "b"}}})
    await app.put_recipient("r1")
    steps = [
        {"id": "feed", "type": "channel", "channel": "inapp", "template": "note"},
        {"id": "wait", "type": "delay", "duration": "1s"},
        {"id": "later", "type": "channel", "channel": "inapp", "template": "note"},
    ]
    response = await app.client.put(
        "/v1/workflows/dies", json={"name": "dies", "steps": steps}, headers=app.auth
    )
    assert response.status_code == 201, response.text
    real = Planner.publish_made
    published: list[list[str]] = []

    async def dies_once(planner: Planner, made: list[Stored]) -> None:
        published.append([item.delivery.id for item in made])
        if len(published) == 2:  # the second step's, after the delay
            raise ConnectionError("the planner died here")
        await real(planner, made)

    monkeypatch.setattr(Planner, "publish_made", dies_once)
    response = await app.send({"workflow": "dies", "to": {"recipient_ids": ["r1"]}})
    assert response.status_code == 202, response.text
    nid = response.json()["id"]
    later = delivery_id(nid, "r1", "later/inapp")
    note: dict[str, Any] = {}

    async def later_sent() -> bool:
        note.update(await app.notification(nid))
        return {d["id"]: d["status"] for d in note["deliveries"]}.get(later) == "sent"

    try:
        await app.until(later_sent, timeout=15)
    except TimeoutError:
        raise AssertionError(f"the second step's delivery was never sent: {note}") from None
    assert published[1] == [later]
    # Taken again, the run made nothing new: the delivery went out as the one stored.
    assert published[2] == []

    async def completed() -> bool:
        # Walked ahead of its delay's end, the run ends when the delay does.
        return (await app.notification(nid))["run_totals"] == {"completed": 1}

    await app.until(completed)
