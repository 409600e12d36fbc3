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

``RunStore.create_many`` decides who created what; only creators send ``start`` (message id
= run id, so Service Bus duplicate detection also collapses resends). When one call creates
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

Schedules (``fire_schedules(now)``): the due fire is ``cron.last_at_or_before(now, tz)``.
Without ``catch_up`` only that fire runs; when the fire before it has no run although the
flow has earlier scheduled runs (the host was down), the miss is *recorded* -- a
``schedule.missed`` telemetry event and an ``ignored`` result, once -- never silently
dropped. With ``catch_up`` the service walks back from the due fire and also starts every
earlier fire without a run, up to ``max_catch_up`` of them, stopping at the first fire that
already has one and never going back past the flow's first scheduled run (a newly deployed
flow does not back-fill history). All of it is idempotent by run id: double and late timer
calls start each fire exactly once. "Earlier scheduled runs" are looked up among the flow's
latest runs (``HISTORY_LIMIT``), only when a fire is found missing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow
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
from shared.ingest.eventgrid import BlobEvent, parse_delivery, parse_events
from shared.telemetry.trace import new_traceparent, traceparent_for

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore
    from shared.queue.base import WorkQueue
    from shared.settings import Settings
    from shared.store.base import RunStore
    from shared.telemetry.base import Telemetry

log = logging.getLogger("conveyor.ingest")

MAX_PARAMS_BYTES = 32 * 1024  # manual params travel on the run row (Table properties cap at 64 KiB)
MAX_KEY_CHARS = 200
HISTORY_LIMIT = 200  # runs of a flow looked at to find its first scheduled fire
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
    """An Event Grid delivery's answer: the validation handshake, or the runs it started."""

    validation_code: str | None = None
    validation_url: str | None = None
    results: list[IngestResult] = field(default_factory=list)
    ignored: int = 0  # events of other types in the delivery

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
    ) -> None:
        self.store = store
        self.queue = queue
        self.flows = flows
        self.settings = settings
        self.blobs = blobs
        self.telemetry = telemetry
        self.clock = clock

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
                continue
            results[i] = IngestResult(p.flow, run.run_id, True, "created", p.reason)
            created.append(p)

        send_error = self._send_starts(created)
        if send_error is not None:
            raise send_error
        return [r for r in results if r is not None]

    def _send_starts(self, created: list[_Plan]) -> Exception | None:
        """Send ``start`` for the runs this call created; returns the first send error, if any.

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
                    error = self._send_one(msg, delay, [p])
                    send_error = send_error or error
                continue
            for chunk in _start_chunks(plans):
                msg = start_batch_message([p.run.run_id for p in chunk if p.run is not None], flow=flow)
                error = self._send_one(msg, delay, chunk)
                send_error = send_error or error
        return send_error

    def _send_one(self, msg: Message, delay: float, plans: list[_Plan]) -> Exception | None:
        try:
            self.queue.send(msg, delay_seconds=delay)
        except Exception as exc:  # the runs stay pending; the sweeper re-sends them
            log.warning("%s for %d run(s) not sent (sweeper will re-send): %s", msg.kind, len(plans), exc)
            return exc
        self._created(plans)
        return None

    def _created(self, plans: list[_Plan]) -> None:
        for p in plans:
            run = p.run
            assert run is not None
            self._emit(
                "run.created",
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
        schema (validated here first; other event types are skipped). ``flow`` limits the
        flows considered to that one (a backfill of one flow); ``dry_run`` creates and sends
        nothing and says per run ``new`` (no run yet), ``duplicate`` or ``ignored``.
        """
        raw = [e for e in events if not isinstance(e, BlobEvent)]
        parsed: list[BlobEvent] = [e for e in events if isinstance(e, BlobEvent)]
        if raw:
            more, _ignored = parse_events(raw)
            parsed.extend(more)
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
        delivery = parse_delivery(body, headers)
        if delivery.kind == "validation":
            return EventGridOutcome(validation_code=delivery.validation_code, validation_url=delivery.validation_url)
        results = self.ingest_blob_events(delivery.events)
        return EventGridOutcome(results=results, ignored=delivery.ignored)

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

    def _first_fire(self, flow_name: str, cache: dict[str, str | None]) -> str | None:
        """The earliest ``fire_time`` among the flow's recent scheduled runs (None: never fired)."""
        if flow_name not in cache:
            fires = [
                str(r.trigger.schedule.get("fire_time", ""))
                for r in self.store.list_runs(flow=flow_name, limit=HISTORY_LIMIT)
                if r.trigger.kind == "schedule" and r.trigger.schedule
            ]
            cache[flow_name] = min((f for f in fires if f), default=None)
        return cache[flow_name]

    def fire_schedules(self, now: datetime) -> list[IngestResult]:
        """Start the due fire of every schedule trigger (and missed ones with catch_up)."""
        from zoneinfo import ZoneInfo

        from shared.flows.cron import Cron

        if now.tzinfo is None:
            raise ValidationError("must be timezone-aware", field="now")
        plans: list[_Plan] = []
        history: dict[str, str | None] = {}
        missed_checks: list[tuple[str, ScheduleTrigger, datetime, str]] = []
        for flow_name in sorted(self.flows.flows):
            flow = self.flows.flows[flow_name]
            for trig in flow.triggers:
                if not isinstance(trig, ScheduleTrigger):
                    continue
                cron = Cron.parse(trig.cron)
                tz = ZoneInfo(trig.timezone)
                due = cron.last_at_or_before(now, tz)
                if due is None:
                    continue
                due_run = self._schedule_run(flow_name, flow, trig, due, now, caught_up=False)
                plans.append(_Plan(flow_name, due_run))
                if trig.catch_up:
                    prev: datetime | None = due
                    for _ in range(trig.max_catch_up):
                        assert prev is not None
                        prev = cron.last_at_or_before(prev - timedelta(microseconds=1), tz)
                        if prev is None:
                            break
                        earlier = self._schedule_run(flow_name, flow, trig, prev, now, caught_up=True)
                        if self._has_run(earlier.run_id):
                            break
                        first = self._first_fire(flow_name, history)
                        if first is None or first >= fire_time_text(prev):
                            break  # before the flow's first scheduled run: nothing was missed
                        plans.append(_Plan(flow_name, earlier, reason="caught up"))
                else:
                    prev = cron.last_at_or_before(due - timedelta(microseconds=1), tz)
                    if prev is not None:
                        missed_checks.append((flow_name, trig, prev, due_run.run_id))
        results = self._submit(plans)
        created = {r.run_id for r in results if r.created}
        for flow_name, trig, prev, due_id in missed_checks:
            # Only when this call created the due fire's run, so a miss is reported once.
            if due_id not in created:
                continue
            text = fire_time_text(prev)
            missed_id = run_id_for(flow_name, "schedule", text)
            if self._has_run(missed_id):
                continue
            first = self._first_fire(flow_name, history)
            if first is None or first >= text:
                continue  # the flow had not fired before: nothing was missed
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
        result = self._submit([_Plan(flow, self.new_run(flow, spec, trigger, run_id))])[0]
        if result.status == "duplicate":
            existing = self.store.get(run_id)
            if existing.trigger.params != trigger.params:
                raise ConflictError(
                    f"idempotency key already used for run {run_id} of flow {flow!r} with different params",
                    status=409,
                )
        return result
