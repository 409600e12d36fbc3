"""Trigger -> run id -> run created once -> start message sent once.

Every trigger handler (Event Grid, timer, Azure DevOps hook, manual HTTP/CLI) comes through
:class:`IngestService`. Each turns its input into a :class:`TriggerContext` and a
deterministic run id:

=============  ================================================================
blob           ``run_id_for(flow, blob url, eTag)``: one run per blob *version*,
               however often Event Grid delivers the event
schedule       ``run_id_for(flow, "schedule", fire time ISO UTC)``: one run per fire,
               however often (or late) the timer calls
Azure DevOps   ``run_id_for(flow, "devops", notification id)``: retried hooks collapse
manual         ``run_id_for(flow, "manual", idempotency key)`` or a fresh uuid
=============  ================================================================

``RunStore.create_many`` decides who created what; creators send ``start`` (message id
= run id, so Service Bus duplicate detection also collapses resends). A duplicate trigger for
a run that is still ``pending`` sends its start again (with what is left of its settle delay):
the call that created the run may have died before its send, and the caller's retry is the
quickest way to find out; a run already past ``pending`` ignores a second start. When one call creates
more than ``BULK_START_MIN`` runs of a flow (a large Event Grid delivery, a schedule catch-up),
their starts travel as ``start_batch`` messages of up to ``MAX_START_BATCH`` run ids each (one
queue send instead of hundreds); the executor fans each out into one ``start`` per run. Everything is
validated before the first create or send: invalid input enqueues nothing. A crash between
create and send leaves the run ``pending``; :func:`shared.ingest.sweeper.sweep_pending`
re-sends it.

Blob trigger options:

* ``prefix`` / ``suffix`` filter names; ``ignore_empty`` ignores zero-length blobs (the result
  says so; manifest blobs such as an empty ``_SUCCESS`` are exempt).
* ``manifest: _SUCCESS``: data blobs of a folder are ignored ("waiting for manifest"); the
  manifest's own event starts one run for its folder. ``trigger.blob`` then describes the
  manifest (url, etag...) plus ``folder`` (the folder's name prefix, ending in ``/`` unless
  it is the container root), ``folder_url`` and ``manifest``. Re-writing the manifest (new
  eTag) starts a new run for the folder.
* ``settle_seconds``: the start message is sent with that delay, so a run begins only after
  the drop has had time to settle (e.g. several blobs written one after the other). The run
  exists at once (status ``pending``); the sweeper leaves it alone until the settle time has
  passed (``trigger.blob.settle_seconds``).

Schedules (``fire_schedules(now)``): the due fire is ``cron.last_at_or_before(now, tz)``, and
a fire counts only when it is later than the schedule's first sight
(:mod:`shared.ingest.schedule_state`): a schedule's first fire is the next one after the flow
is first seen, so a host started on a fresh data home does not run last night's fire. A fire
that already has its run is skipped without a store write or a telemetry line (the service
remembers the last fire it found per schedule). Without ``catch_up`` only the due fire runs;
when the fire before it has no run although it came after the first sight (the host was
down), the miss is *recorded* -- a ``schedule.missed`` telemetry event and an ``ignored``
result, once -- never silently dropped. With ``catch_up`` the service walks back from the due
fire and also starts every earlier fire without a run, up to ``max_catch_up`` of them,
stopping at the first fire that already has one and never going back to the first sight or
before. All of it is idempotent by run id: double and late timer calls start each fire
exactly once.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow
from shared.engine.decide import planned_start
from shared.engine.model import (
    MAX_START_BATCH,
    MAX_START_BATCH_CHARS,
    Message,
    Run,
    RunStatus,
    StepRun,
    TriggerContext,
    run_id_for,
    start_batch_message,
)
from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.flows.model import AzureDevOpsTrigger, BlobTrigger, Flow, FlowsFile, ManualTrigger, ScheduleTrigger
from shared.ingest.devops import DevOpsEvent, authenticate, parse_devops
from shared.ingest.eventgrid import BlobEvent, Delivery, Ignored, parse_delivery, parse_events
from shared.ingest.schedule_state import BlobScheduleState, MemoryScheduleState, ScheduleKey, ScheduleState
from shared.telemetry.trace import new_traceparent, traceparent_for

if TYPE_CHECKING:
    from shared.blobs.account import BlobAccount
    from shared.blobs.base import BlobStore
    from shared.queue.base import WorkQueue
    from shared.settings import Settings
    from shared.store.base import RunStore
    from shared.telemetry.base import Telemetry

log = logging.getLogger("conveyor.ingest")

MAX_PARAMS_BYTES = 32 * 1024  # manual params travel on the run row (Table properties cap at 64 KiB)
MAX_KEY_CHARS = 200
HISTORY_LIMIT = 200  # runs of a flow looked at once, when a schedule without a record is first seen
BULK_START_MIN = 8  # more runs than this of one flow and delay: start_batch messages, not one start each


@dataclass
class IngestResult:
    flow: str
    run_id: str
    created: bool
    status: str  # "created" | "duplicate" | "ignored"
    reason: str = ""


@dataclass
class EventGridOutcome:
    """An Event Grid delivery's answer: the validation handshake, or the runs it started.

    ``ignored`` lists the events that started nothing: other event types, and refused
    BlobCreated events (``refused=True``, with the reason). ``events`` counts the delivery's events.
    """

    validation_code: str | None = None
    validation_url: str | None = None
    results: list[IngestResult] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    events: int = 0

    @property
    def validation(self) -> dict[str, str] | None:
        """``{"validationResponse": code}`` for a SubscriptionValidation delivery, else None."""
        return None if self.validation_code is None else {"validationResponse": self.validation_code}


@dataclass
class _Plan:
    """One run to create (or one ignored trigger) before anything is written."""

    flow: str
    run: Run | None
    delay: float = 0.0
    status: str = ""  # set for ignored plans
    reason: str = ""


def _start_chunks(plans: list[_Plan]) -> list[list[_Plan]]:
    """Plans cut into start_batch-sized chunks (count and characters of run ids)."""
    chunks: list[list[_Plan]] = []
    chunk: list[_Plan] = []
    chars = 0
    for p in plans:
        size = len(p.run.run_id) + 3 if p.run is not None else 0
        if chunk and (len(chunk) >= MAX_START_BATCH or chars + size > MAX_START_BATCH_CHARS):
            chunks.append(chunk)
            chunk, chars = [], 0
        chunk.append(p)
        chars += size
    if chunk:
        chunks.append(chunk)
    return chunks


def fire_time_text(when: datetime) -> str:
    """A fire time as the ISO UTC text the run id and ``trigger.schedule.fire_time`` use."""
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _etag_key(etag: str) -> str:
    """ETags arrive quoted (``"0x8D..."``) or not, depending on the producer; one run either way."""
    e = etag.strip()
    if e.startswith("W/"):
        e = e[2:]
    return e.strip('"')


class IngestService:
    def __init__(
        self,
        store: RunStore,
        queue: WorkQueue,
        flows: FlowsFile,
        settings: Settings | None = None,
        blobs: BlobStore | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], datetime] = utcnow,
        schedule_state: ScheduleState | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.flows = flows
        self.settings = settings
        self.blobs = blobs
        self.telemetry = telemetry
        self.clock = clock
        self._blob_account: BlobAccount | None = None
        # where schedules were first seen; in memory only when nothing else is given (tests)
        self.schedule_state = schedule_state or MemoryScheduleState()
        self._fired: dict[ScheduleKey, str] = {}  # the latest fire known to have its run

    @classmethod
    def from_services(cls, services: Any) -> IngestService:
        """Build from :class:`shared.wiring.Services` (the blob adapter is not built: not needed)."""
        return cls(
            services.store,
            services.queue,
            services.flows,
            settings=services.settings,
            blobs=services.__dict__.get("blobs"),
            telemetry=services.telemetry,
            schedule_state=BlobScheduleState(lambda: services.blobs),
        )

    # ------------------------------------------------------------ common

    def new_run(self, flow_name: str, flow: Flow, trigger: TriggerContext, run_id: str) -> Run:
        now = self.clock()
        return Run(
            run_id=run_id,
            flow=flow_name,
            status=RunStatus.PENDING,
            trigger=trigger,
            steps=[StepRun(name=s.name, kind=s.kind) for s in flow.steps],
            created_at=now,
            updated_at=now,
            traceparent=traceparent_for(run_id),  # duplicates of this trigger share the run's trace
        )

    def _emit(self, name: str, *, traceparent: str, run_id: str | None = None, **attributes: Any) -> None:
        if self.telemetry is None:
            return
        try:
            self.telemetry.event(name, traceparent=traceparent, run_id=run_id, attributes=attributes)
        except Exception:  # telemetry must never lose a trigger
            log.exception("telemetry event %s failed", name)

    def _submit(self, plans: list[_Plan]) -> list[IngestResult]:
        """Create every planned run (once), then send ``start`` for the ones this call created."""
        results: list[IngestResult | None] = [None] * len(plans)
        to_create: list[tuple[int, _Plan]] = []
        seen: dict[str, int] = {}
        for i, p in enumerate(plans):
            if p.run is None:
                results[i] = IngestResult(p.flow, "", False, p.status or "ignored", p.reason)
                self._emit("trigger.ignored", traceparent=new_traceparent(), flow=p.flow, reason=p.reason)
            elif p.run.run_id in seen:  # the same unit of work twice in one batch
                results[i] = IngestResult(p.flow, p.run.run_id, False, "duplicate", "repeated in the same delivery")
            else:
                seen[p.run.run_id] = i
                to_create.append((i, p))

        created_flags = self.store.create_many([p.run for _, p in to_create if p.run is not None]) if to_create else []
        if len(created_flags) != len(to_create):
            raise RuntimeError("RunStore.create_many returned a result count different from the runs given")

        created: list[_Plan] = []
        duplicates: list[tuple[int, _Plan]] = []
        for (i, p), was_created in zip(to_create, created_flags, strict=True):
            run = p.run
            assert run is not None
            self._emit(
                "trigger.received",
                traceparent=run.traceparent,
                run_id=run.run_id,
                flow=p.flow,
                kind=run.trigger.kind,
                source=run.trigger.source,
                created=bool(was_created),
            )
            if not was_created:
                results[i] = IngestResult(p.flow, run.run_id, False, "duplicate", "run already exists")
                duplicates.append((i, p))
                continue
            results[i] = IngestResult(p.flow, run.run_id, True, "created", p.reason)
            created.append(p)

        send_error = self._send_starts(created)
        pending = self._still_pending(duplicates)
        for i, _p in pending:
            result = results[i]
            assert result is not None
            result.reason = "run already exists and is still pending: its start was sent again"
        resend_error = self._send_starts([p for _, p in pending], resent=True)
        if send_error is not None or resend_error is not None:
            raise send_error or resend_error  # type: ignore[misc]
        return [r for r in results if r is not None]

    def _still_pending(self, duplicates: list[tuple[int, _Plan]]) -> list[tuple[int, _Plan]]:
        """The duplicates whose stored run is still ``pending``, as plans for that stored run
        (with the rest of its settle delay)."""
        if not duplicates:
            return []
        stored = self.store.get_many([p.run.run_id for _, p in duplicates if p.run is not None])
        now = self.clock()
        out: list[tuple[int, _Plan]] = []
        for (i, p), run in zip(duplicates, stored, strict=True):
            if run is not None and run.status is RunStatus.PENDING:
                left = max(0.0, (planned_start(run) - now).total_seconds())
                out.append((i, _Plan(p.flow, run, delay=left)))
        return out

    def _send_starts(self, created: list[_Plan], resent: bool = False) -> Exception | None:
        """Send ``start`` for the runs this call created (or, ``resent``, found still pending);
        returns the first send error, if any.

        Runs of one flow with the same delay go together: more than ``BULK_START_MIN`` of them
        travel as ``start_batch`` messages (one queue send per up to ``MAX_START_BATCH`` runs,
        fanned out into per-run starts by the executor); fewer get one ``start`` each (message
        id = run id). A run whose message could not be sent stays pending for the sweeper.
        """
        groups: dict[tuple[str, float], list[_Plan]] = {}
        for p in created:
            groups.setdefault((p.flow, p.delay), []).append(p)
        send_error: Exception | None = None
        for (flow, delay), plans in groups.items():
            if len(plans) <= BULK_START_MIN:
                for p in plans:
                    run = p.run
                    assert run is not None
                    msg = Message(kind="start", run_id=run.run_id, flow=flow, traceparent=run.traceparent).with_id()
                    error = self._send_one(msg, delay, [p], resent)
                    send_error = send_error or error
                continue
            for chunk in _start_chunks(plans):
                msg = start_batch_message([p.run.run_id for p in chunk if p.run is not None], flow=flow)
                error = self._send_one(msg, delay, chunk, resent)
                send_error = send_error or error
        return send_error

    def _send_one(self, msg: Message, delay: float, plans: list[_Plan], resent: bool = False) -> Exception | None:
        try:
            self.queue.send(msg, delay_seconds=delay)
        except Exception as exc:  # the runs stay pending; the sweeper re-sends them
            log.warning("%s for %d run(s) not sent (sweeper will re-send): %s", msg.kind, len(plans), exc)
            return exc
        self._created(plans, "run.start_resent" if resent else "run.created")
        return None

    def _created(self, plans: list[_Plan], event: str = "run.created") -> None:
        for p in plans:
            run = p.run
            assert run is not None
            self._emit(
                event,
                traceparent=run.traceparent,
                run_id=run.run_id,
                flow=p.flow,
                kind=run.trigger.kind,
                source=run.trigger.source,
                start_delay_seconds=p.delay,
            )

    def _flow(self, name: str) -> Flow:
        flow = self.flows.flows.get(name)
        if flow is None:
            known = ", ".join(sorted(self.flows.flows)) or "none"
            raise NotFoundError(f"no flow named {name[:100]!r} (known flows: {known})")
        return flow

    # ------------------------------------------------------------ blobs

    @property
    def blob_account(self) -> BlobAccount:
        """The configured storage account: the only one whose blob URLs start runs."""
        if self._blob_account is None:
            from shared.blobs.account import BlobAccount
            from shared.settings import get_settings

            self._blob_account = BlobAccount.from_settings(self.settings or get_settings())
        return self._blob_account

    def _blob_plans(self, ev: BlobEvent, now: datetime, only: str | None = None) -> list[_Plan]:
        plans: list[_Plan] = []
        for flow_name in sorted(self.flows.flows):
            if only is not None and flow_name != only:
                continue
            flow = self.flows.flows[flow_name]
            for trig in flow.triggers:
                if not isinstance(trig, BlobTrigger):
                    continue
                plan = self._blob_plan(flow_name, flow, trig, ev, now)
                if plan is not None:
                    plans.append(plan)
        return plans

    def _blob_plan(self, flow_name: str, flow: Flow, trig: BlobTrigger, ev: BlobEvent, now: datetime) -> _Plan | None:
        if ev.container != trig.container or not ev.name.startswith(trig.prefix):
            return None
        info = ev.as_trigger()
        info["settle_seconds"] = trig.settle_seconds
        if trig.manifest:
            manifest = trig.manifest.strip("/")
            is_manifest = ev.name == manifest or ev.name.endswith("/" + manifest)
            if not is_manifest:
                if not ev.name.endswith(trig.suffix):
                    return None
                return _Plan(flow_name, None, status="ignored", reason=f"waiting for manifest {manifest}")
            folder = ev.name[: len(ev.name) - len(manifest)]
            info["manifest"] = manifest
            info["folder"] = folder
            info["folder_url"] = self._folder_url(ev, manifest)
        else:
            if not ev.name.endswith(trig.suffix):
                return None
            if trig.ignore_empty and ev.size == 0:
                return _Plan(flow_name, None, status="ignored", reason="empty blob (ignore_empty)")
        trigger = TriggerContext(kind="blob", blob=info, source=ev.url, received_at=now)
        run = self.new_run(flow_name, flow, trigger, run_id_for(flow_name, ev.url, _etag_key(ev.etag)))
        return _Plan(flow_name, run, delay=float(trig.settle_seconds))

    @staticmethod
    def _folder_url(ev: BlobEvent, manifest: str) -> str:
        """The folder's URL: the manifest's URL without its last ``manifest``-many path segments."""
        return ev.url.rsplit("/", manifest.count("/") + 1)[0] + "/"

    def ingest_blob_events(
        self, events: Sequence[BlobEvent | Mapping[str, Any]], *, flow: str | None = None, dry_run: bool = False
    ) -> list[IngestResult]:
        """Start every flow whose blob trigger matches each event. See the module docstring.

        ``events`` are :class:`BlobEvent` objects, or raw event objects of either Event Grid
        schema (validated here first by the one parser; other event types are skipped and
        refused events reported, as :meth:`ingest_delivery` does).
        ``flow`` limits the flows considered to that one (a backfill of one flow); ``dry_run``
        creates and sends nothing and says per run ``new`` (no run yet), ``duplicate`` or ``ignored``.
        """
        raw = [e for e in events if not isinstance(e, BlobEvent)]
        parsed: list[BlobEvent] = [e for e in events if isinstance(e, BlobEvent)]
        if raw:
            delivery = parse_events(raw, account=self.blob_account)
            self._report_ignored(delivery.ignored)
            parsed.extend(delivery.events)
        now = self.clock()
        plans: list[_Plan] = []
        for ev in parsed:
            matched = self._blob_plans(ev, now, flow)
            if not matched:
                self._emit("trigger.unmatched", traceparent=new_traceparent(), kind="blob", source=ev.url)
            plans.extend(matched)
        return self._dry_run(plans) if dry_run else self._submit(plans)

    def _dry_run(self, plans: list[_Plan]) -> list[IngestResult]:
        out: list[IngestResult] = []
        for p in plans:
            if p.run is None:
                out.append(IngestResult(p.flow, "", False, p.status or "ignored", p.reason))
            elif self._has_run(p.run.run_id):
                out.append(IngestResult(p.flow, p.run.run_id, False, "duplicate", "run already exists"))
            else:
                out.append(IngestResult(p.flow, p.run.run_id, False, "new", p.run.trigger.source))
        return out

    def ingest_eventgrid(self, body: bytes | str, headers: Mapping[str, str]) -> EventGridOutcome:
        """One Event Grid webhook POST (both HTTP routes): the strict parser, then :meth:`ingest_delivery`."""
        return self.ingest_delivery(parse_delivery(body, headers, account=self.blob_account))

    def ingest_delivery(self, delivery: Delivery) -> EventGridOutcome:
        """Report what the delivery's refused events were, then start the runs of its BlobCreated events."""
        if delivery.kind == "validation":
            return EventGridOutcome(
                validation_code=delivery.validation_code, validation_url=delivery.validation_url, events=1
            )
        self._report_ignored(delivery.ignored)
        results = self.ingest_blob_events(delivery.events)
        return EventGridOutcome(results=results, ignored=delivery.ignored, events=delivery.count)

    def _report_ignored(self, ignored: Sequence[Ignored]) -> None:
        """A refused event: a warning and a ``trigger.refused`` telemetry event (no run, nothing sent)."""
        for item in ignored:
            if not item.refused:
                log.debug("event %r (%r) starts nothing: %s", item.event_id, item.event_type[:100], item.reason)
                continue
            log.warning(
                "refused blob event %r, nothing started: %s (subject %r)",
                item.event_id,
                item.reason,
                item.subject,
            )
            self._emit(
                "trigger.refused",
                traceparent=new_traceparent(),
                kind="blob",
                event_id=item.event_id,
                event_type=item.event_type,
                subject=item.subject,
                reason=item.reason,
            )

    # ------------------------------------------------------------ schedules

    def _schedule_run(
        self, flow_name: str, flow: Flow, trig: ScheduleTrigger, fire: datetime, now: datetime, caught_up: bool
    ) -> Run:
        text = fire_time_text(fire)
        trigger = TriggerContext(
            kind="schedule",
            schedule={"fire_time": text, "timezone": trig.timezone, "cron": trig.cron, "caught_up": caught_up},
            source=f"schedule {trig.cron} ({trig.timezone}) at {text}",
            received_at=now,
        )
        return self.new_run(flow_name, flow, trigger, run_id_for(flow_name, "schedule", text))

    def _has_run(self, run_id: str) -> bool:
        try:
            self.store.get(run_id)
        except NotFoundError:
            return False
        return True

    def _earliest_fire(self, key: ScheduleKey, now: datetime) -> datetime:
        """First sight for a schedule without a record: ``now``, or the earliest fire of it that
        already has a run (a data home from before schedule records keeps its history)."""
        fires = [
            str(r.trigger.schedule.get("fire_time", ""))
            for r in self.store.list_runs(flow=key.flow, limit=HISTORY_LIMIT)
            if r.trigger.kind == "schedule"
            and r.trigger.schedule
            and r.trigger.schedule.get("cron") == key.cron
            and r.trigger.schedule.get("timezone") == key.timezone
        ]
        earliest = min((f for f in fires if f), default=None)
        if earliest is None:
            return now
        # a second before that fire, so that it still counts as after the first sight
        return min(now, datetime.fromisoformat(earliest.replace("Z", "+00:00")) - timedelta(seconds=1))

    def fire_schedules(self, now: datetime) -> list[IngestResult]:
        """Start the due fire of every schedule trigger (and missed ones with catch_up)."""
        from shared.flows.cron import Cron, zone

        if now.tzinfo is None:
            raise ValidationError("must be timezone-aware", field="now")
        plans: list[_Plan] = []
        done: list[IngestResult] = []
        missed_checks: list[tuple[str, ScheduleTrigger, datetime, str]] = []
        due_keys: dict[str, ScheduleKey] = {}
        for flow_name in sorted(self.flows.flows):
            flow = self.flows.flows[flow_name]
            for trig in flow.triggers:
                if not isinstance(trig, ScheduleTrigger):
                    continue
                cron = Cron.parse(trig.cron)
                tz = zone(trig.timezone)
                key = ScheduleKey(flow_name, trig.cron, trig.timezone)
                seen = self.schedule_state.first_seen(key, functools.partial(self._earliest_fire, key, now))
                due = cron.last_at_or_before(now, tz)
                if due is None or due <= seen:
                    continue  # the first fire is the next one after the schedule was first seen
                due_run = self._schedule_run(flow_name, flow, trig, due, now, caught_up=False)
                if self._fired.get(key) == due_run.run_id or self._has_run(due_run.run_id):
                    # nothing to write or log on every tick for a fire that has its run
                    self._fired[key] = due_run.run_id
                    done.append(IngestResult(flow_name, due_run.run_id, False, "duplicate", "run already exists"))
                    continue
                plans.append(_Plan(flow_name, due_run))
                due_keys[due_run.run_id] = key
                if trig.catch_up:
                    prev: datetime | None = due
                    for _ in range(trig.max_catch_up):
                        assert prev is not None
                        prev = cron.last_at_or_before(prev - timedelta(microseconds=1), tz)
                        if prev is None or prev <= seen:
                            break  # before the schedule was first seen: nothing was missed
                        earlier = self._schedule_run(flow_name, flow, trig, prev, now, caught_up=True)
                        if self._has_run(earlier.run_id):
                            break
                        plans.append(_Plan(flow_name, earlier, reason="caught up"))
                else:
                    prev = cron.last_at_or_before(due - timedelta(microseconds=1), tz)
                    if prev is not None and prev > seen:
                        missed_checks.append((flow_name, trig, prev, due_run.run_id))
        results = done + self._submit(plans)
        created = {r.run_id for r in results if r.created}
        for flow_name, trig, prev, due_id in missed_checks:
            # Only when this call created the due fire's run, so a miss is reported once.
            if due_id not in created:
                continue
            text = fire_time_text(prev)
            missed_id = run_id_for(flow_name, "schedule", text)
            if self._has_run(missed_id):
                continue
            reason = f"missed fire at {text} skipped: catch_up is off (earlier fires may also have been missed)"
            self._emit(
                "schedule.missed",
                traceparent=new_traceparent(),
                flow=flow_name,
                fire_time=text,
                cron=trig.cron,
                timezone=trig.timezone,
                reason=reason,
            )
            results.append(IngestResult(flow_name, missed_id, False, "ignored", reason))
        for r in results:
            if r.run_id in due_keys and r.status in ("created", "duplicate"):
                self._fired[due_keys[r.run_id]] = r.run_id
        return results

    # ------------------------------------------------------------ Azure DevOps

    @staticmethod
    def _devops_matches(trig: AzureDevOpsTrigger, ev: DevOpsEvent) -> bool:
        if ev.event_type not in trig.events:
            return False
        if trig.repository is not None and (ev.repository or "").casefold() != trig.repository.casefold():
            return False
        if trig.branch is not None and ev.branch != trig.branch.removeprefix("refs/heads/"):
            return False
        return not (trig.result is not None and (ev.result or "").casefold() != trig.result.casefold())

    def ingest_devops(self, body: bytes | str, headers: Mapping[str, str]) -> list[IngestResult]:
        """Authenticate (before reading the body), parse, start every matching flow once per notification."""
        from shared.settings import get_settings

        authenticate(headers, self.settings or get_settings())
        ev = parse_devops(body)
        now = self.clock()
        plans: list[_Plan] = []
        for flow_name in sorted(self.flows.flows):
            flow = self.flows.flows[flow_name]
            if not any(isinstance(t, AzureDevOpsTrigger) and self._devops_matches(t, ev) for t in flow.triggers):
                continue
            trigger = TriggerContext(
                kind="azure_devops",
                devops=ev.as_trigger(),
                source=f"azure devops {ev.event_type} {ev.event_id}",
                received_at=now,
            )
            run_id = run_id_for(flow_name, "devops", ev.event_id)
            plans.append(_Plan(flow_name, self.new_run(flow_name, flow, trigger, run_id)))
        if not plans:
            self._emit(
                "trigger.unmatched",
                traceparent=new_traceparent(),
                kind="azure_devops",
                source=f"{ev.event_type} {ev.event_id}",
                repository=ev.repository,
                branch=ev.branch,
                result=ev.result,
            )
        return self._submit(plans)

    # ------------------------------------------------------------ manual

    def start_manual(
        self, flow: str, params: Mapping[str, Any] | None = None, idempotency_key: str | None = None
    ) -> IngestResult:
        """Start ``flow`` by hand. The same key starts it once; reusing a key with other params is a conflict."""
        spec = self._flow(flow)
        if not any(isinstance(t, ManualTrigger) for t in spec.triggers):
            raise ValidationError(
                f"flow {flow!r} has no manual trigger; add '- kind: manual' to its triggers in flows.yaml "
                "to allow starting it by hand",
                field="flow",
            )
        params = dict(params or {})
        if not all(isinstance(k, str) for k in params):
            raise ValidationError("keys must be strings", field="params")
        try:
            encoded = json.dumps(params, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be JSON-serialisable: {exc}", field="params") from exc
        if len(encoded.encode("utf-8")) > MAX_PARAMS_BYTES:
            raise ValidationError(f"larger than {MAX_PARAMS_BYTES} bytes as JSON", field="params")
        if idempotency_key is not None:
            if (
                not isinstance(idempotency_key, str)
                or not 0 < len(idempotency_key) <= MAX_KEY_CHARS
                or not idempotency_key.isprintable()
            ):
                raise ValidationError(f"must be 1-{MAX_KEY_CHARS} printable characters", field="idempotency_key")
            run_id = run_id_for(flow, "manual", idempotency_key)
        else:
            run_id = uuid.uuid4().hex
        trigger = TriggerContext(
            kind="manual",
            params=json.loads(encoded),
            source=f"manual{' key ' + idempotency_key if idempotency_key else ''}",
            received_at=self.clock(),
        )
        if idempotency_key is not None:  # a key reused with other params sends nothing
            existing = self.store.get_many([run_id])[0]
            if existing is not None and existing.trigger.params != trigger.params:
                raise ConflictError(
                    f"idempotency key already used for run {run_id} of flow {flow!r} with different params",
                    status=409,
                )
        return self._submit([_Plan(flow, self.new_run(flow, spec, trigger, run_id))])[0]
