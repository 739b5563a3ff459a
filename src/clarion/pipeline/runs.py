"""Workflow runs: a workflow send becomes one run per recipient, which walks the
workflow's steps (domain/runs.py says what each step does).

A run is stored when its notification is planned, pinned to the workflow's active version,
and advanced at once as far as it goes: through conditions, channel steps (their deliveries
are planned as a template send's are: pipeline/planner.py ``plan_steps``) and exits, up to a
step that waits (a delay, a digest window it carries, or a ``first_success`` step waiting on
its delivery) or to its end. It is walked in memory first: one that reaches a wait or its
end without planning anything is stored as it then stands; the others are stored leased,
then advanced. A digest step's window is opened, joined or closed in the
transaction that stores its runs (store/run_digests.py). A category digest's window is
carried by a run of the built-in workflow ``~digest`` that the planner stores with the
window (store/digests.py); woken like any run, it closes its window into the digest
notification in the transaction that stores it completed (pipeline/digests.py ``close``).
A waiting run is a stored row with its wake time, not a task in memory: the planners take
the due ones in batches (``wake_once``), each under a lease, so a run whose advancer dies is
taken again when the lease ends. Advancing a run again from its stored step makes nothing
twice: a step's deliveries have ids derived from (notification, recipient, step, channel),
and a save counts only for the lease (``turn``) it was advanced under. Those of a step's
deliveries that an earlier advance stored are published again (it may have died before it
published them), and an attempt published twice is still sent once.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from clarion.domain import runs as rules
from clarion.domain.delivery import Stored
from clarion.domain.durations import duration_seconds
from clarion.domain.ids import delivery_id
from clarion.domain.models import WAITING_STATUSES, DeliveryStatus
from clarion.domain.rendering import CompiledVersion
from clarion.domain.runs import DeliveryFacts, RunStatus, StepRecord, run_id
from clarion.domain.workflows import (
    CLOCK,
    DIGEST_FLOW,
    SEND_STEP,
    TEMPLATE_FLOW,
    WAIT_STEP,
    Step,
    Workflow,
    digest_flow,
    template_flow,
)
from clarion.pipeline import digests
from clarion.pipeline.context import Context
from clarion.pipeline.messages import by_due_time, publish_deliveries
from clarion.resilience.ratelimit import Take
from clarion.store import digest_closing, planning, run_digests
from clarion.store import digests as digest_store
from clarion.store import runs as run_store
from clarion.store import workflows as workflow_store
from clarion.store.batching import is_outage
from clarion.store.bulk import StripeChunk
from clarion.store.db import utcnow, write_tx
from clarion.store.notifications import delete_outbox

log = logging.getLogger(__name__)

# Runs woken in one batch.
WAKE_BATCH = 500
_RECIPIENT = ("id", "email", "phone", "locale", "timezone")


@dataclass(frozen=True, slots=True)
class StepAsk:
    """A workflow channel step to plan: the notification's row, the recipient, the step's
    id, template and channels."""

    note: dict[str, Any]
    recipient: str
    step: str
    template: str
    channels: tuple[str, ...]
    # The digest the run carried to this step (``digest`` in the template's context).
    digest: dict[str, Any] | None = None
    # The recipient's row as the run's advance read it (none: the planner reads it).
    person: dict[str, Any] | None = None
    # The step is walked ahead of the delay before it (``Runs._delay``): its deliveries
    # are decided for this time (quiet hours, expiry) and scheduled for it.
    not_before: datetime | None = None


class StepPlanner(Protocol):
    """What plans a channel step's deliveries (pipeline/planner.py)."""

    async def plan_steps(
        self, asks: list[StepAsk], now: datetime
    ) -> tuple[list[list[str]], list[Stored]]: ...

    async def publish_made(self, made: list[Stored]) -> None: ...

    async def compiled(
        self, keys: set[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], CompiledVersion]: ...


# What expressions and steps know of deliveries, by id.
Facts = dict[str, DeliveryFacts]


# An in-app delivery in one of these is still to be sent: its offline fallback can come.
_TO_SEND = WAITING_STATUSES


def offline_runs(
    sends: dict[str, tuple[dict[str, Any], int, tuple[str, str]]],
    made: Sequence[Stored],
    now: datetime,
) -> list[dict[str, Any]]:
    """The runs of template sends whose template's in-app part has an offline fallback
    (``sends``: notification id -> its row, the template version planned, and the
    fallback's duration and channel), for the deliveries just planned: one per recipient
    with an in-app delivery to send. Each runs the built-in workflow of its template
    (domain/workflows.py ``template_flow``) and is stored with its send step done (its
    deliveries are these) and waiting in the delay, which counts from when the in-app
    delivery is due."""
    per_recipient: dict[tuple[str, str], list[Stored]] = {}
    for item in made:
        if item.delivery.notification in sends:
            key = (item.delivery.notification, item.delivery.recipient)
            per_recipient.setdefault(key, []).append(item)
    moment = now.timestamp()
    rows = []
    for (nid, rid), items in per_recipient.items():
        inapp = next(
            (i for i in items if i.delivery.channel == "inapp" and i.status in _TO_SEND), None
        )
        if inapp is None:
            continue
        note, version, (after, _) = sends[nid]
        due = inapp.scheduled_for.timestamp() if inapp.scheduled_for is not None else moment
        until = max(due, moment) + duration_seconds(after)
        send = StepRecord(
            SEND_STEP,
            rules.step_status([DeliveryFacts(status=i.status) for i in items]),
            moment,
            moment,
            [i.delivery.id for i in items],
            {i.delivery.channel: [i.delivery.id] for i in items},
        )
        wait = StepRecord(WAIT_STEP, rules.WAITING, moment, until=until)
        rows.append(
            {
                "id": run_id(nid, rid),
                "tenant_id": note["tenant_id"],
                "notification_id": nid,
                "recipient_id": rid,
                "workflow": TEMPLATE_FLOW,
                "version": version,
                "cancellation_key": None,
                "status": RunStatus.WAITING,
                "step": 1,
                "turn": 0,
                "steps": [send.to_json(), wait.to_json()],
                "wake_at": datetime.fromtimestamp(until, UTC),
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


@dataclass(slots=True, eq=False)
class _Run:
    """A run being advanced: its stored row, its workflow, notification and recipient."""

    row: dict[str, Any]
    workflow: Workflow | None
    note: dict[str, Any] | None
    recipient: dict[str, Any] | None
    records: list[StepRecord] = field(default_factory=list)
    status: str = RunStatus.RUNNING
    wake_at: datetime | None = None
    # A channel step waiting for its deliveries to be planned: the step and the channels.
    asked: tuple[Step, tuple[str, ...]] | None = None
    # A throttle step waiting for the limiter's answer: the step and its key.
    limit: tuple[Step, str] | None = None
    # A digest step waiting for its window: the step, and its key (none: the run carries
    # the window, which is over, and closes it).
    gather: tuple[Step, str | None] | None = None
    # Cancelled or taken by another advancer while this one held it: left as it is.
    lost: bool = False
    # A category digest's carrier (``~digest``): its window's row (none: gone), and whether
    # it asks to close the window.
    window: dict[str, Any] | None = None
    closing: bool = False
    # Stored already, in the transaction that closed its window (or left as it is).
    stored: bool = False
    # Walked ahead of now: the end of the delay it passed early (``Runs._delay``), the
    # time its later steps are walked at.
    clock: datetime | None = None
    # Walked ahead to its end, and woken at the delay's end only to complete (``_walk``):
    # it reads nothing.
    ending: bool = False

    def ahead(self, now: datetime) -> datetime | None:
        """The delay's end it is walked at, while that is still to come (else None)."""
        return self.clock if self.clock is not None and self.clock > now else None

    @property
    def step(self) -> int:
        return len(self.records) - (1 if self._open() else 0)

    def _open(self) -> bool:
        return bool(self.records) and self.records[-1].ended_at is None

    def current(self) -> StepRecord | None:
        return self.records[-1] if self._open() else None


class Runs:
    """The workflow engine of one planner."""

    def __init__(self, ctx: Context, planner: StepPlanner) -> None:
        self._ctx = ctx
        self._planner = planner
        # A run being advanced is leased for this long: one whose advancer died is taken
        # again after.
        self._lease = ctx.settings.workflow_run_lease
        # A delay whose next steps rest on nothing that can still change is passed this
        # long before it ends (``_delay``).
        self._ahead = ctx.settings.workflow_wake_ahead
        # Set while more runs are due than a batch: the last wake took a full one.
        self._backlog = asyncio.Event()

    async def start(self, notes: Sequence[dict[str, Any]], now: datetime) -> None:
        """Store the runs of these workflow sends (one per recipient; none twice, and
        none of a send whose workflow is gone) and plan them: their outbox rows go in the
        same transaction. Then advance the new ones."""
        versions = await self._versions(notes)
        rows = [
            row for note in notes for row in self._rows(note, note["recipient_ids"], versions, now)
        ]
        rows, loaded = await self._walk_first(rows, now)
        async with write_tx(self._ctx.engine) as conn:
            fresh = await run_store.insert(conn, rows)
            await delete_outbox(conn, [n["id"] for n in notes])
        await self._begin(rows, fresh, now, loaded)

    async def store_offline(self, rows: list[dict[str, Any]]) -> None:
        """Store the waiting runs of template sends (:func:`offline_runs`), before their
        deliveries: a plan replayed after a crash between the two stores the deliveries
        and finds the runs there; a run whose send was cancelled meanwhile wakes to plan
        nothing (a cancelled notification gets no delivery)."""
        if rows:
            async with write_tx(self._ctx.engine) as conn:
                await run_store.insert(conn, rows)

    async def start_chunk(
        self, note: dict[str, Any], recipient_ids: list[str], chunk: StripeChunk, now: datetime
    ) -> bool:
        """Store the runs of one chunk of a topic send through a workflow with the stripe's
        cursor (store/planning.py ``store_stripe_runs``), then advance them. False if the
        chunk was stored already, or the send cancelled."""
        versions = await self._versions([note])
        rows, loaded = await self._walk_first(self._rows(note, recipient_ids, versions, now), now)
        fresh = await planning.store_stripe_runs(self._ctx.engine, rows, chunk)
        if fresh is None:
            return False
        leased = [row for row in rows if row["id"] in loaded]
        for start in range(0, len(leased), WAKE_BATCH):
            await self._begin(leased[start : start + WAKE_BATCH], fresh, now, loaded)
        return True

    async def _walk_first(
        self, rows: list[dict[str, Any]], now: datetime
    ) -> tuple[list[dict[str, Any]], dict[str, _Run]]:
        """Walk new runs in memory before they are stored. A run that stops in a wait (a
        delay) or ends before anything else must be stored (a delivery planned, a
        throttle's count, a digest window) is stored as it then stands: one write, where
        storing it leased and saving its advance took two and left the wake-time index an
        entry to step over for every run. The others are stored leased, as they were made;
        returned with them, by id, are those runs as loaded, for their first advance."""
        runs = await self._load(rows)
        out: list[dict[str, Any]] = []
        loaded: dict[str, _Run] = {}
        for row, run in zip(rows, runs, strict=True):
            if run.workflow is not None and run.note is not None:
                try:
                    self._walk(run, {}, now)
                except Exception:  # the advance fails it alone (``advance``)
                    pass
                else:
                    if run.status != RunStatus.RUNNING and not (
                        run.asked or run.limit or run.gather
                    ):
                        out.append({**row, **_saved(run, now), "turn": 0})
                        continue
            out.append(row)
            loaded[row["id"]] = _Run(row, run.workflow, run.note, run.recipient)
        return out, loaded

    async def _versions(self, notes: Sequence[dict[str, Any]]) -> dict[tuple[str, str], int]:
        async with self._ctx.engine.connect() as conn:
            return await workflow_store.active_versions(
                conn, {(n["tenant_id"], n["workflow"]) for n in notes}
            )

    def _rows(
        self,
        note: dict[str, Any],
        recipient_ids: Sequence[str],
        versions: dict[tuple[str, str], int],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """The runs of a workflow send's recipients, pinned to the workflow's active
        version (none if the workflow is gone)."""
        version = versions.get((note["tenant_id"], note["workflow"]))
        if version is None:
            log.warning("notification %s: workflow %r is gone", note["id"], note["workflow"])
            return []
        return [
            {
                "id": run_id(note["id"], rid),
                "tenant_id": note["tenant_id"],
                "notification_id": note["id"],
                "recipient_id": rid,
                "workflow": note["workflow"],
                "version": version,
                "cancellation_key": note.get("cancellation_key"),
                "status": RunStatus.RUNNING,
                "step": 0,
                # Stored leased for its first advance, by whoever stores it.
                "turn": 1,
                "steps": [],
                "wake_at": now + timedelta(seconds=self._lease),
                "created_at": now,
                "updated_at": now,
            }
            for rid in recipient_ids
        ]

    async def _begin(
        self,
        rows: list[dict[str, Any]],
        fresh: set[str],
        now: datetime,
        loaded: dict[str, _Run],
    ) -> None:
        """Advance the runs just stored leased (those of ``rows`` in ``loaded``)."""
        taken = [row for row in rows if row["id"] in fresh and row["id"] in loaded]
        if taken:
            await self.advance(taken, now, [loaded[row["id"]] for row in taken])

    async def wake_once(self, limit: int = WAKE_BATCH) -> int:
        """Advance the runs that are due (a delay over, a delivery to look at, a lease
        run out); how many."""
        now = utcnow()
        taken = await run_store.take_due(
            self._ctx.engine,
            now,
            self._lease,
            limit,
            self._ctx.pg,
            # The last take found more due than a batch: some surely are.
            look_first=not self._backlog.is_set(),
        )
        if len(taken) >= limit:
            self._backlog.set()
        else:
            self._backlog.clear()
        if taken:
            await self.advance(taken, now)
        return len(taken)

    async def help_once(self, stop: asyncio.Event) -> int:
        """An extra hand: wait (without looking at the store) until a wake finds more runs
        due than a batch, or ``stop``; then wake a batch. How many it advanced."""
        if not self._backlog.is_set():
            waits = [asyncio.ensure_future(e.wait()) for e in (self._backlog, stop)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if stop.is_set():
                return 0
        return await self.wake_once()

    async def advance(
        self, rows: list[dict[str, Any]], now: datetime, loaded: list[_Run] | None = None
    ) -> None:
        """Advance leased runs as far as each goes now, then store where each stands
        (``loaded``: the runs of ``rows`` as just loaded, not read again). A batch that
        fails for anything but an outage is split in halves and each advanced again (read
        again), down to the run that fails, which alone ends ``failed``: one tenant's bad
        run never holds up the others (an outage leaves them to their leases)."""
        try:
            await self._advance(rows, now, loaded)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(rows) > 1:
                middle = len(rows) // 2
                await self.advance(rows[:middle], now)
                await self.advance(rows[middle:], now)
                return
            row = rows[0]
            log.error("workflow run %s cannot be advanced: %r", row["id"], exc, exc_info=exc)
            failed = {"status": RunStatus.FAILED, "wake_at": None, "updated_at": now}
            await run_store.save(self._ctx.engine, [{**row, **failed}], self._ctx.pg)

    async def _advance(
        self, rows: list[dict[str, Any]], now: datetime, loaded: list[_Run] | None = None
    ) -> None:
        runs = loaded if loaded is not None else await self._load(rows)
        active = []
        for run in runs:
            if run.ending:
                run.status, run.wake_at = RunStatus.COMPLETED, None
            elif run.workflow is None or (run.note is None and run.window is None):
                # Its workflow version, its notification or its digest window is gone.
                run.status = RunStatus.FAILED
            else:
                active.append(run)
        # What the deliveries just planned are, known without reading them back.
        planned: dict[str, DeliveryFacts] = {}
        while active:
            wanted = [d for run in active for r in run.records for d in r.deliveries]
            facts = await run_store.facts(self._ctx.engine, [d for d in wanted if d not in planned])
            facts.update((d, planned[d]) for d in wanted if d in planned)
            planned.clear()
            for run in active:
                self._walk(run, facts, now)
            asking = [run for run in active if run.asked is not None]
            limited = [run for run in active if run.limit is not None]
            gathering = [run for run in active if run.gather is not None]
            closing = [run for run in active if run.closing]
            if not asking and not limited and not gathering and not closing:
                break
            if asking:
                planned = await self._plan_asked(asking, now)
            if limited:
                await self._throttle(limited, now)
            if gathering:
                await self._gather(gathering, now)
            if closing:
                await self._close_windows(closing, now)
            active = asking + limited + [run for run in gathering if not run.lost]
        saved = [_saved(run, now) for run in runs if not run.lost and not run.stored]
        await run_store.save(self._ctx.engine, saved, self._ctx.pg)

    async def _load(self, rows: list[dict[str, Any]]) -> list[_Run]:
        engine, pg = self._ctx.engine, self._ctx.pg
        # A category digest's carrier has no notification before its window closes, nor a
        # tenant's workflow: its window's row is what it needs (``_carriers``).
        sends = [r for r in rows if r["workflow"] != DIGEST_FLOW]
        flows = await workflow_store.load_versions(
            engine,
            {
                (r["tenant_id"], r["workflow"], r["version"])
                for r in sends
                if r["workflow"] != TEMPLATE_FLOW
            },
            pg,
        )

        def ending(row: dict[str, Any]) -> bool:
            """Walked ahead to its end (``_walk``): every step it has is over, and it has
            no more (or an exit ended it)."""
            flow = flows.get((row["tenant_id"], row["workflow"], row["version"]))
            raw = row["steps"] or []
            return (
                flow is not None
                and row["workflow"] != TEMPLATE_FLOW
                and bool(raw)
                and raw[-1].get("ended_at") is not None
                and (len(raw) >= len(flow.steps) or raw[-1].get("status") == rules.EXITED)
            )

        ends = {row["id"] for row in sends if ending(row)}
        sends = [row for row in sends if row["id"] not in ends]
        notes: dict[str, dict[str, Any]] = {}
        people: dict[tuple[str, str], dict[str, Any]] = {}
        if sends:
            async with planning.reads(engine, pg) as reads:
                notes = await reads.notifications(list({r["notification_id"] for r in sends}))
                people = await reads.recipients(
                    {(r["tenant_id"], r["recipient_id"]) for r in sends}
                )
        builtin = await self._template_flows(sends, notes)
        carriers = await self._carriers([r for r in rows if r["workflow"] == DIGEST_FLOW])

        def flow_of(row: dict[str, Any]) -> Workflow | None:
            key = (row["tenant_id"], row["workflow"], row["version"])
            if row["workflow"] != TEMPLATE_FLOW:
                return flows.get(key)
            note = notes.get(row["notification_id"])
            return builtin.get((key[0], note["template"], key[2])) if note else None

        return [
            carriers[row["id"]]
            if row["id"] in carriers
            else _Run(
                row,
                flow_of(row),
                notes.get(row["notification_id"]),
                people.get((row["tenant_id"], row["recipient_id"])),
                [StepRecord.from_json(raw) for raw in row["steps"] or []],
                ending=row["id"] in ends,
            )
            for row in rows
        ]

    async def _carriers(self, rows: list[dict[str, Any]]) -> dict[str, _Run]:
        """The carriers of category digest windows (``~digest``), by id, each with its
        window's row and the built-in workflow of the window's category (none when the
        window is gone)."""
        if not rows:
            return {}
        records = {row["id"]: [StepRecord.from_json(raw) for raw in row["steps"]] for row in rows}
        ids = {r.window for found in records.values() for r in found if r.window is not None}
        windows = await digest_store.windows(self._ctx.engine, sorted(ids))
        found = {}
        for row in rows:
            window_id = next((r.window for r in records[row["id"]] if r.window), None)
            window = windows.get(window_id) if window_id is not None else None
            flow = digest_flow(window["category"]) if window is not None else None
            found[row["id"]] = _Run(row, flow, None, None, records[row["id"]], window=window)
        return found

    async def _template_flows(
        self, rows: list[dict[str, Any]], notes: dict[str, dict[str, Any]]
    ) -> dict[tuple[str, str, int], Workflow]:
        """The built-in workflows of template sends' runs (:func:`offline_runs`), by
        (tenant, template, version): each from the template version its send was planned
        with."""
        wanted = set()
        for row in rows:
            note = notes.get(row["notification_id"])
            if row["workflow"] == TEMPLATE_FLOW and note is not None and note["template"]:
                wanted.add((row["tenant_id"], str(note["template"]), int(row["version"])))
        if not wanted:
            return {}
        compiled = await self._planner.compiled(wanted)
        return {
            key: template_flow(key[1], *version.offline)
            for key, version in compiled.items()
            if version.offline is not None
        }

    async def _plan_asked(self, runs: list[_Run], now: datetime) -> dict[str, DeliveryFacts]:
        """Plan the deliveries of the channel steps the runs ask for; what the ones stored
        now are (those stored before, by an earlier try, are read back as they are now)."""
        asks = []
        for run in runs:
            assert run.asked is not None
            assert run.note is not None
            step, channels = run.asked
            asks.append(
                StepAsk(
                    run.note,
                    run.row["recipient_id"],
                    step.id,
                    step.fields["template"],
                    channels,
                    rules.carried(run.records),
                    run.recipient,
                    run.ahead(now),
                )
            )
        per_ask, made = await self._planner.plan_steps(asks, now)
        fresh = {item.delivery.id for item in made}
        earlier = [d for ids in per_ask for d in ids if d not in fresh]
        made = await self._unless_cancelled(runs, made, now)
        await self._planner.publish_made(made)
        if earlier:
            await self._publish_again(earlier)
        for run, ask, ids in zip(runs, asks, per_ask, strict=True):
            record = run.current()
            assert record is not None
            for channel in ask.channels:
                mine = delivery_id(ask.note["id"], ask.recipient, f"{ask.step}/{channel}")
                record.channels[channel] = [mine] if mine in ids else []
            record.deliveries.extend(ids)
            run.asked = None
        return {item.delivery.id: DeliveryFacts(status=item.status) for item in made}

    async def _publish_again(self, ids: list[str]) -> None:
        """Publish again those of these deliveries that wait and are not being sent: an
        earlier advance of the run stored them, and its planner died (or failed) before
        it published them or saved the run, whose lease then ran out. Published twice,
        an attempt is still sent once (its claim); without this they would wait for the
        sweeper."""
        waiting = await run_store.still_waiting(self._ctx.engine, ids)
        ready, later = by_due_time(waiting, utcnow().timestamp())
        await publish_deliveries(self._ctx.broker, ready, later)

    async def _unless_cancelled(
        self, runs: list[_Run], made: list[Stored], now: datetime
    ) -> list[Stored]:
        """Of the deliveries just stored, those whose run has not been cancelled meanwhile:
        a cancellation that committed before they were stored did not see them, so they
        are cancelled here (the runs' rows are read under lock on PostgreSQL, so a
        cancellation still being written is waited for; one after this sees them)."""
        # Only a run with a cancellation key can be cancelled on its own: a cancelled
        # notification is kept out by the insert itself (store/planning.py store_plan).
        keyed = [r.row["id"] for r in runs if r.row["cancellation_key"] is not None]
        if not keyed:
            return made
        cancelled = await run_store.cancelled_of(self._ctx.engine, keyed)
        if not cancelled:
            return made
        pairs = {
            (r.row["notification_id"], r.row["recipient_id"])
            for r in runs
            if r.row["id"] in cancelled
        }
        await run_store.stop_deliveries(self._ctx.engine, sorted(pairs), now)
        for run in runs:
            if run.row["id"] in cancelled:
                run.status = RunStatus.CANCELLED
        return [
            item
            for item in made
            if (item.delivery.notification, item.delivery.recipient) not in pairs
        ]

    def _walk(self, run: _Run, facts: dict[str, DeliveryFacts], now: datetime) -> None:
        """Take ``run`` through its steps until one waits, asks for deliveries, or the
        run ends. A run walked ahead of a delay's end that ends before that end waits for
        it instead: until then it has not finished, and a cancellation still reaches it and
        the deliveries scheduled for the end."""
        self._walk_steps(run, facts, now)
        end = run.ahead(now)
        if run.status == RunStatus.COMPLETED and end is not None:
            run.status, run.wake_at = RunStatus.WAITING, end

    def _walk_steps(self, run: _Run, facts: dict[str, DeliveryFacts], now: datetime) -> None:
        assert run.workflow is not None
        steps = run.workflow.steps
        if run.records and run.records[-1].status == rules.EXITED:
            # Ended by an exit step ahead of its time (``_walk``), and now past it.
            run.status, run.wake_at = RunStatus.COMPLETED, None
            return
        while run.status not in rules.ENDED:
            # Past a delay it passed early, the run is walked at the delay's end.
            at = run.ahead(now) or now
            moment = at.timestamp()
            index = run.step
            if index >= len(steps):
                run.status, run.wake_at = RunStatus.COMPLETED, None
                return
            step = steps[index]
            record = run.current()
            if record is None:
                if step.condition is not None and not rules.holds(
                    step.condition, self._context(run, facts)
                ):
                    run.records.append(StepRecord(step.id, rules.SKIPPED, moment, moment))
                    continue
                record = StepRecord(step.id, rules.WAITING, moment)
                run.records.append(record)
            if not self._step(run, step, record, facts, at):
                return

    def _step(self, run: _Run, step: Step, record: StepRecord, facts: Facts, now: datetime) -> bool:
        """Do what ``step`` does at ``record``; whether the run goes on to the next step."""
        moment = now.timestamp()
        if step.type == "exit":
            record.status, record.ended_at = rules.EXITED, moment
            run.status, run.wake_at = RunStatus.COMPLETED, None
            return False
        if step.type == "delay":
            return self._delay(run, step, record, now)
        if step.type == "channel":
            return self._channel(run, step, record, facts, now)
        if step.type == "throttle":
            if record.status == rules.WAITING:
                run.limit = (step, self._throttle_key(run, step, facts))
                return False
            return record.status == rules.PASSED
        return self._digest(run, step, record, facts, now)

    def _digest(
        self, run: _Run, step: Step, record: StepRecord, facts: Facts, now: datetime
    ) -> bool:
        """A digest step: a run that has not entered the window yet asks to (with its key);
        the carrier waits until its window is over, then asks to close it. A category
        digest's carrier asks at once: its window's row, read under lock as it is closed,
        says whether it is due (a full window is due before its time)."""
        if run.window is not None:
            run.closing = True
            return False
        if record.until is None:
            run.gather = (step, self._digest_key(run, step, facts))
            return False
        if record.until > now.timestamp():
            run.status, run.wake_at = RunStatus.WAITING, datetime.fromtimestamp(record.until, UTC)
            return False
        run.gather = (step, None)
        return False

    def _delay(self, run: _Run, step: Step, record: StepRecord, now: datetime) -> bool:
        """A delay: the run waits until it ends. One whose next steps rest on nothing that
        can still change (:func:`rules.walks_ahead`) is woken ``workflow_wake_ahead``
        before the end and passes it then, walked on at the end's time: the deliveries of
        its next steps are made at once, scheduled for the end, so that however many runs
        end their delay together, theirs go out when it ends."""
        moment = now.timestamp()
        if record.until is None:
            until = self._until(run, step, now)
            if until is None:
                record.status, record.ended_at = DeliveryStatus.FAILED.value, moment
                return True
            record.until = until.timestamp()
        if record.until > moment:
            assert run.workflow is not None
            ahead = self._ahead if rules.walks_ahead(run.workflow.steps, run.step) else 0.0
            if record.until - ahead > moment:
                run.status = RunStatus.WAITING
                run.wake_at = datetime.fromtimestamp(record.until - ahead, UTC)
                return False
            run.clock = datetime.fromtimestamp(record.until, UTC)
            moment = record.until
        record.status, record.ended_at = rules.DONE, moment
        return True

    def _until(self, run: _Run, step: Step, now: datetime) -> datetime | None:
        """When a delay ends: its duration from now, or its ``until``: a recipient-local
        ``HH:MM`` (the next one, in the recipient's time zone) or an expression giving an
        RFC 3339 time. None when ``until`` gives no time."""
        seconds = rules.delay_seconds(step)
        if seconds is not None:
            return now + timedelta(seconds=seconds)
        until = str(step.fields["until"])
        if CLOCK.match(until):
            return next_clock(until, (run.recipient or {}).get("timezone"), now)
        value = rules.evaluate(until, self._context(run, {}))
        if isinstance(value, datetime):
            return value if value.tzinfo else None
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else None

    def _channel(
        self, run: _Run, step: Step, record: StepRecord, facts: Facts, now: datetime
    ) -> bool:
        moment = now.timestamp()
        channels = rules.channels_of(step)
        if not rules.first_success(step):
            if not record.channels:
                run.asked = (step, tuple(channels))
                return False
            record.status = rules.step_status([facts[d] for d in record.deliveries if d in facts])
            record.ended_at = moment
            return True
        # First success: the channel being tried, and what became of its delivery.
        while record.tried < len(channels):
            channel = channels[record.tried]
            if channel not in record.channels:
                run.asked = (step, (channel,))
                return False
            seen = [facts[d] for d in record.channels[channel] if d in facts]
            status = rules.step_status(seen)
            if status in rules.SUCCEEDED:
                record.status, record.ended_at = status, moment
                return True
            if all(f.status in rules.GAVE_UP for f in seen):
                # Failed for good, suppressed (opted out, no address), or none made (the
                # template has no such part): the next channel is tried.
                record.tried += 1
                continue
            run.status = RunStatus.WAITING
            run.wake_at = datetime.fromtimestamp(rules.next_look(record.at, moment), UTC)
            return False
        record.status, record.ended_at = DeliveryStatus.FAILED.value, moment
        return True

    def _throttle_key(self, run: _Run, step: Step, facts: dict[str, DeliveryFacts]) -> str:
        """The limiter's key of a throttle step: its ``key`` expression's value (default:
        the recipient), within the tenant and workflow."""
        source = step.fields.get("key")
        value = (
            run.row["recipient_id"]
            if source is None
            else rules.evaluate(source, self._context(run, facts))
        )
        return f"workflow:{run.row['tenant_id']}:{run.row['workflow']}:{step.id}:{value}"

    def _digest_key(self, run: _Run, step: Step, facts: dict[str, DeliveryFacts]) -> str:
        """The key of a digest step's window, within the tenant, workflow and step: the
        recipient's, with its ``key`` expression's value (domain/runs.py ``digest_key``)."""
        source = step.fields.get("key")
        value = None if source is None else rules.evaluate(source, self._context(run, facts))
        return rules.digest_key(value, run.row["recipient_id"])

    async def _gather(self, runs: list[_Run], now: datetime) -> None:
        """Enter or close the digest windows the runs ask for (store/run_digests.py), and
        store each run with its outcome in the same transaction: a carrier that opened its
        window waits until it closes; a run that joined one ends ``digested``; a carrier
        that closed its window goes on with ``digest`` (the count and the events)."""
        entering, closing = [], []
        for run in runs:
            assert run.gather is not None
            assert run.note is not None
            step, key = run.gather
            run.gather = None
            rid, turn = run.row["id"], run.row["turn"]
            if key is None:
                closing.append(run_digests.Closing(rid, turn, step.id))
                continue
            window = (run.row["tenant_id"], run.row["workflow"], step.id, key)
            closes_at = now + timedelta(seconds=rules.window_seconds(step))
            entering.append(
                run_digests.Entering(rid, turn, window, closes_at, run.note["data"] or {})
            )
        by_id = {run.row["id"]: run for run in runs}
        moment = now.timestamp()

        def rows_of(outcomes: dict[str, run_digests.Outcome]) -> list[dict[str, Any]]:
            for rid, outcome in outcomes.items():
                _settle(by_id[rid], outcome, moment)
            return [_saved(by_id[rid], now) for rid in outcomes]

        outcomes = await run_digests.settle(
            self._ctx.engine,
            entering,
            closing,
            now,
            self._ctx.settings.workflow_digest_max_events,
            rows_of,
        )
        for run in runs:
            run.lost = run.row["id"] not in outcomes

    async def _close_windows(self, runs: list[_Run], now: datetime) -> None:
        """Close the category digest windows these carriers carry (pipeline/digests.py
        ``close``), each carrier stored in the same transaction: completed, its step with
        the count, once its window is closed; waiting until the window's time if it is not
        due yet."""
        closing = []
        for run in runs:
            assert run.window is not None
            run.closing = False
            closing.append(digest_closing.Closing(run.row["id"], run.row["turn"], run.window["id"]))
        by_id = {run.row["id"]: run for run in runs}
        moment = now.timestamp()

        def rows_of(outcomes: dict[str, digest_closing.Outcome]) -> list[dict[str, Any]]:
            for rid, outcome in outcomes.items():
                run = by_id[rid]
                if _shut(run, outcome, moment):
                    self._walk(run, {}, now)  # past its last step: completed
            return [_saved(by_id[rid], now) for rid in outcomes]

        await digests.close(self._ctx, closing, now, rows_of)
        for run in runs:
            # Stored with its window's closing, or (not among the outcomes) taken by
            # another advancer meanwhile: either way nothing is left to store.
            run.stored = True

    async def _throttle(self, runs: list[_Run], now: datetime) -> None:
        """Ask the limiter for each run at a throttle step; one over the limit ends
        ``throttled``. A throttle is a bucket of ``limit`` refilled over ``window`` (the
        rate limiter's GCRA, as the categories' caps are), shared by every process."""
        takes = []
        for run in runs:
            assert run.limit is not None
            step, key = run.limit
            window = float(duration_seconds(step.fields["window"]))
            limit = int(step.fields["limit"])
            takes.append(Take(key, limit / window, limit))
        decisions = await self._ctx.resilience.limiter.take_many(takes)
        moment = now.timestamp()
        for run, decision in zip(runs, decisions, strict=True):
            record = run.current()
            assert record is not None
            run.limit = None
            record.ended_at = moment
            if decision.allowed:
                record.status = rules.PASSED
            else:
                record.status = RunStatus.THROTTLED.value
                run.status, run.wake_at = RunStatus.THROTTLED, None

    def _context(self, run: _Run, facts: dict[str, DeliveryFacts]) -> dict[str, Any]:
        assert run.note is not None
        recipient = run.recipient or {"id": run.row["recipient_id"]}
        steps = {
            record.id: rules.step_view(record, [facts[d] for d in record.deliveries if d in facts])
            for record in run.records
        }
        return rules.expression_context(
            run.note["data"] or {},
            {name: recipient.get(name) for name in _RECIPIENT},
            steps,
            rules.carried(run.records),
        )


def _settle(run: _Run, outcome: run_digests.Outcome, moment: float) -> None:
    """What a digest step's outcome makes of the run (in memory; stored with it)."""
    record = run.current()
    assert record is not None
    if isinstance(outcome, run_digests.Opened):
        record.until = outcome.closes_at.timestamp()
        run.status, run.wake_at = RunStatus.WAITING, outcome.closes_at
    elif isinstance(outcome, run_digests.Joined):
        record.status, record.into, record.ended_at = rules.DIGESTED, outcome.into, moment
        run.status, run.wake_at = RunStatus.DIGESTED, None
    else:
        record.status, record.ended_at = rules.DONE, moment
        record.count, record.events = outcome.count, outcome.events
        run.status = RunStatus.RUNNING


def _shut(run: _Run, outcome: digest_closing.Outcome, moment: float) -> bool:
    """What a category digest window's closing makes of its carrier (in memory; stored
    with it): whether its step is over."""
    record = run.current()
    assert record is not None
    if isinstance(outcome, digest_closing.Waits):
        record.until = outcome.closes_at.timestamp()
        run.status, run.wake_at = RunStatus.WAITING, outcome.closes_at
        return False
    record.status, record.ended_at, record.count = rules.DONE, moment, outcome.count
    if outcome.closes_at is not None:
        record.until = outcome.closes_at.timestamp()
    run.status = RunStatus.RUNNING
    return True


def _saved(run: _Run, now: datetime) -> dict[str, Any]:
    """A run's row as store/runs.py ``save`` takes it. One still running keeps its lease
    (it is saved on the way, by a digest step, and again when it stops)."""
    running = run.status == RunStatus.RUNNING
    return {
        "id": run.row["id"],
        "turn": run.row["turn"],
        "status": run.status,
        "step": run.step,
        "steps": [record.to_json() for record in run.records],
        "wake_at": run.row["wake_at"] if running else run.wake_at,
        "updated_at": now,
    }


def next_clock(clock: str, timezone: str | None, now: datetime) -> datetime:
    """The next ``HH:MM`` after ``now`` on the wall clock of ``timezone`` (UTC when none
    or unknown). A time that a DST change skips that day is taken as the first moment after
    the gap; one it repeats, as its first occurrence."""
    try:
        zone = zoneinfo.ZoneInfo(timezone) if timezone else zoneinfo.ZoneInfo("UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    hour, minute = (int(part) for part in clock.split(":"))
    local = now.astimezone(zone)
    for days in range(0, 3):
        day = (local + timedelta(days=days)).date()
        wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=0)
        instant = wall.astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) != wall.replace(tzinfo=None):
            # In a gap: the wall time does not exist; the gap's end is the moment meant.
            instant = datetime(
                day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=1
            ).astimezone(UTC)
        if instant > now:
            return instant
    return now + timedelta(days=1)


# What a `POST /v1/workflows/{key}/test` assumes of a channel step it passes: sent, not
# seen. Its `assume` overrides any of these (`steps.<id>.<field>`).
_ASSUMED = {
    "status": DeliveryStatus.SENT.value,
    "seen": False,
    "read": False,
    "archived": False,
    "opened": False,
    "clicked": False,
}


def on_paper(
    workflow: Workflow,
    data: dict[str, Any],
    recipient: dict[str, Any],
    assume: dict[str, dict[str, Any]],
    render: Any,
    now: datetime,
    digest: dict[str, Any],
) -> tuple[str, list[dict[str, Any]]]:
    """The path a run would take, nothing stored or sent: each step reached with what it
    would do. ``assume`` gives, per step id, what expressions read of it (``status``,
    ``seen``, ``read``, ``archived``, ``opened``, ``clicked``); a channel step is otherwise
    taken as sent and not seen, opened or clicked, a throttle as passed. A digest step is
    taken as the first trigger of its window, which closes with ``digest`` (the count and
    events that later steps read).
    ``render(template, channel, digest)`` is the step's content, or an error. The status
    the run would end with, and the steps."""
    views: dict[str, dict[str, Any]] = {}
    path: list[dict[str, Any]] = []
    shown = {name: recipient.get(name) for name in _RECIPIENT}
    carried: dict[str, Any] | None = None
    for step in workflow.steps:
        context = rules.expression_context(data, shown, views, carried)
        entry: dict[str, Any] = {"id": step.id, "type": step.type}
        path.append(entry)
        if not rules.holds(step.condition, context):
            entry["status"] = rules.SKIPPED
            views[step.id] = {**_ASSUMED, "status": rules.SKIPPED, **assume.get(step.id, {})}
            continue
        if step.type == "exit":
            entry["status"] = rules.EXITED
            return RunStatus.COMPLETED.value, path
        if step.type == "delay":
            seconds = rules.delay_seconds(step)
            if seconds is not None:
                entry["wait_seconds"] = seconds
            else:
                until = str(step.fields["until"])
                if CLOCK.match(until):
                    entry["until"] = next_clock(until, recipient.get("timezone"), now)
                else:
                    entry["until"] = rules.evaluate(until, context)
            entry["status"] = rules.DONE
            views[step.id] = {**_ASSUMED, "status": rules.DONE, **assume.get(step.id, {})}
            continue
        if step.type == "throttle":
            view = {**_ASSUMED, "status": rules.PASSED, **assume.get(step.id, {})}
            entry["status"] = view["status"]
            views[step.id] = view
            if view["status"] == RunStatus.THROTTLED:
                return RunStatus.THROTTLED.value, path
            continue
        if step.type == "channel":
            channels = rules.channels_of(step)
            entry["channels"] = channels
            entry["mode"] = "first_success" if rules.first_success(step) else "all"
            entry["content"] = {c: render(step.fields["template"], c, carried) for c in channels}
            view = {**_ASSUMED, **assume.get(step.id, {})}
            entry["status"] = view["status"]
            views[step.id] = view
            continue
        # A digest step: the window this trigger would open, closed with ``digest``.
        source = step.fields.get("key")
        value = None if source is None else rules.evaluate(source, context)
        entry["key"] = rules.digest_key(value, str(recipient.get("id") or ""))
        entry["window_seconds"] = rules.window_seconds(step)
        entry["status"] = rules.DONE
        views[step.id] = {**_ASSUMED, "status": rules.DONE, **assume.get(step.id, {})}
        carried = digest
    return RunStatus.COMPLETED.value, path
