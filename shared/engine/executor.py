"""The executor: the thin shell that applies ``decide`` through the ports.

For one queue message: load the run, decide, save it with its ETag, then perform the
commands in order. Launch and Poll produce observations (``Launched``, ``Polled``...) that
are fed back into ``decide`` the same way until none is left (on the copy just saved: its
ETag guards the next save, so the run is only read again after a lost race). The run is always saved
*before* its commands are performed, so an idempotency key is on record before any launch
that uses it; a crash between the two is repaired when the queue redelivers the message
(``delivery_count`` > 1 lets ``decide`` resume the run's pending side effect).

A lost optimistic-concurrency race reloads the run and decides the same event again (a few
times, then ``ConcurrencyError``, which is retryable: the queue redelivers).

For flows with for_each steps it also loads what ``decide`` needs of the fan-outs (every
FanOut row of the run, and the instance row the event is about), saves the fan-out rows a
decision returns (one transaction, instead of the run) and performs the fan-out commands:
``Resolve`` (load a for_each step's outputs), ``CreateFanOut`` (store the items, then the
FanOut row), ``LoadInstances`` and ``FollowUp``. Each gives an observation back to ``decide``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pydantic

from shared import safejson
from shared.backends.base import JobBackend, LaunchRequest
from shared.clock import Clock, utcnow
from shared.engine.commands import (
    Cancel,
    Command,
    CreateFanOut,
    Emit,
    FollowUp,
    Launch,
    LoadInstances,
    Poll,
    Resolve,
    Send,
    StartQueued,
)
from shared.engine.decide import (
    Decision,
    Event,
    FanOutCreated,
    FanOuts,
    Incoming,
    InstancesLoaded,
    Launched,
    LaunchFailed,
    Observation,
    Polled,
    PollFailed,
    Recheck,
    Resolved,
    decide,
    fan_out_steps,
    overdue,
    start_message,
)
from shared.engine.model import MAX_START_BATCH, FanOut, InstanceRun, Message, Run, RunStatus, StepState
from shared.engine.scope import earlier_steps, fanout_refs, template_scope
from shared.errors import ConcurrencyError, ConveyorError, NotFoundError, ValidationError
from shared.flows.model import Flow, FlowsFile
from shared.queue.base import WorkQueue
from shared.store.base import ITEMS_PER_PAGE, InstanceStore, RunStore

if TYPE_CHECKING:
    from shared.events.publisher import LifecycleEvents
    from shared.telemetry.base import Span, Telemetry
    from shared.wiring import Services

log = logging.getLogger("conveyor.engine")

MAX_SAVE_TRIES = 5
MAX_EVENTS_PER_MESSAGE = 64  # observations fed back for one message (a guard, never reached normally)
QUEUED_SCAN_LIMIT = 1000
OUTPUTS_PAGE = 1000
STALL_SCAN_INSTANCES = 1000  # active instance rows the sweep reads per fan-out for their deadlines
ACTIVE_INSTANCE_STATES = (StepState.LAUNCHING, StepState.RUNNING, StepState.RETRY_WAIT)
CACHE_ENTRIES = 64  # item pages and for_each outputs kept per executor (both immutable once written)


@dataclass
class _Loaded:
    """What one handler last loaded or saved: the run, its FanOut rows and instance rows (with ETags)."""

    run: Run
    heads: dict[str, FanOut] = field(default_factory=dict)
    rows: dict[tuple[str, int], InstanceRun] = field(default_factory=dict)


def parse_message(body: str | bytes) -> Message:
    """A queue body as a Message; anything malformed raises ValidationError naming the field."""
    data = safejson.loads(body, field="body")  # size, depth, numbers, NaN, surrogates: a ValidationError
    if not isinstance(data, dict):
        raise ValidationError("message body must be a JSON object", field="body")
    try:
        message = Message.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ValidationError(err.get("msg", "invalid message"), field=field) from exc
    if not message.run_id:
        raise ValidationError("run_id must not be empty", field="run_id")
    if message.kind in ("tick", "fanout"):
        for name in ("step", "attempt", "tick"):
            if getattr(message, name) is None:
                raise ValidationError(f"a {message.kind} message needs step, attempt and tick", field=name)
    if message.index is not None and (message.kind != "tick" or message.index < 0):
        raise ValidationError("only a tick message carries an index, never negative", field="index")
    if message.kind == "start_batch":
        ids = message.run_ids
        if not ids or len(ids) > MAX_START_BATCH:
            raise ValidationError(f"a start_batch message needs 1-{MAX_START_BATCH} run ids", field="run_ids")
        if not all(ids):
            raise ValidationError("run ids must not be empty", field="run_ids")
    elif message.run_ids is not None:
        raise ValidationError("only a start_batch message carries run_ids", field="run_ids")
    return message


class Executor:
    def __init__(
        self,
        store: RunStore,
        queue: WorkQueue,
        flows: FlowsFile,
        backend: Callable[[str], JobBackend],
        telemetry: Telemetry | None = None,
        clock: Clock = utcnow,
        instances: InstanceStore | None = None,
        events: LifecycleEvents | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.flows = flows
        self.backend = backend
        self.telemetry = telemetry
        self.clock = clock
        self.instances = instances
        self._cache: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.events = events  # lifecycle CloudEvents out (shared.events), fed from Emit

    @classmethod
    def from_services(cls, services: Services) -> Executor:
        return cls(
            services.store,
            services.queue,
            services.flows,
            services.backend,
            services.telemetry,
            instances=services.instances,
            events=services.events,
        )

    # -------------------------------------------------------------- entry points

    def handle_body(self, body: str | bytes, *, delivery_count: int = 1) -> None:
        """Parse and handle one queue body. Malformed → ValidationError (the caller dead-letters)."""
        self.handle(parse_message(body), delivery_count=delivery_count)

    def handle(self, message: Message, *, delivery_count: int = 1) -> None:
        """Apply one message and everything it leads to.

        Raises RetryableError subclasses when the message should be redelivered; an unknown
        run is logged and dropped.
        """
        if message.kind == "start_batch":
            self._fan_out(message, delivery_count)
            return
        redelivered = delivery_count > 1
        if redelivered and self.events is not None:
            self._reconcile_events(message.run_id)
        events: deque[Observation | None] = deque([None])
        handled = 0
        latest: _Loaded | None = None  # the run (and fan-out rows) as last loaded or saved, with ETags
        while events:
            observation = events.popleft()
            handled += 1
            if handled > MAX_EVENTS_PER_MESSAGE:
                log.error("run %s: more than %d events for one message; stopping", message.run_id, handled - 1)
                return
            outcome = self._decide_and_save(message, observation, redelivered, latest)
            if outcome is None:
                return
            loaded, flow, decision = outcome
            latest = loaded
            for command in decision.commands:
                produced = self._perform(loaded, flow, command)
                if produced is not None:
                    events.append(produced)

    def _fan_out(self, message: Message, delivery_count: int) -> None:
        """A ``start_batch`` becomes one ``start`` per run (message id = run id), sent together.

        Quick (no run is read) and small per run: each run is then started by its own message,
        on whichever worker takes it, well within the batch message's visibility timeout. If
        sending fails part-way, the error propagates and the queue redelivers the batch, which
        sends every start again: starting is idempotent per run (a start for a run already past
        ``pending`` does nothing; Service Bus also collapses the resends by message id), and a
        run whose start never arrives stays ``pending`` for the sweeper.
        """
        run_ids = list(dict.fromkeys(message.run_ids or []))
        if not run_ids:
            return
        starts = [
            Message(kind="start", run_id=rid, flow=message.flow, traceparent=message.traceparent).with_id()
            for rid in run_ids
        ]
        log.info("start_batch %s (delivery %d): sending %d start messages", message.run_id, delivery_count, len(starts))
        self.queue.send_many(starts)

    def resume_stalled(
        self, grace_seconds: float, idle_seconds: float = 900.0, limit: int = 1000, now: datetime | None = None
    ) -> list[str]:
        """Sweeper hook: nudge runs whose next message is overdue (``decide.overdue``).

        A RUNNING run gets a redelivered-style start, which re-issues what it waits on (the same
        launch key, the current ticks) and saves their new deadlines; a QUEUED run whose flow has
        a free slot again gets a plain start (the start that would have released it was lost
        with a host). Returns the run ids nudged."""
        now = now or self.clock()
        nudged: list[str] = []
        for run in self.store.list_runs(None, [RunStatus.RUNNING], limit=limit):
            instances_due = self._earliest_instance_due(run) if run.due_at is None else None
            if not overdue(run, now, grace_seconds, idle_seconds, instances_due):
                continue
            log.warning("run %s: its next message was due at %s and never came; resuming", run.run_id, run.due_at)
            self.handle(start_message(run), delivery_count=2)
            nudged.append(run.run_id)
        for run in self.store.list_runs(None, [RunStatus.QUEUED], limit=limit):
            flow = self.flows.flows.get(run.flow)
            limit_of_flow = flow.policies.max_concurrent_runs if flow is not None else None
            if (now - run.updated_at).total_seconds() <= grace_seconds:
                continue
            if limit_of_flow is not None and self._active_runs(run) >= limit_of_flow:
                continue  # no free slot: its start comes when a run of the flow ends
            log.warning("run %s: queued while its flow has a free slot; starting it", run.run_id)
            self.handle(start_message(run))
            nudged.append(run.run_id)
        return nudged

    def _earliest_instance_due(self, run: Run) -> datetime | None:
        """The earliest deadline among the active instances of ``run``'s active fan-outs (at most
        ``STALL_SCAN_INSTANCES`` rows read per fan-out), or None when none has one."""
        if self.instances is None:
            return None
        earliest: datetime | None = None
        for step in run.steps:
            if step.fanout is None or not step.state.active:
                continue
            start = 0
            while start < STALL_SCAN_INSTANCES:
                rows = self.instances.instances(
                    run.run_id, step.name, step.fanout.epoch, states=ACTIVE_INSTANCE_STATES, start=start, limit=100
                )
                for row in rows:
                    if row.due_at is not None and (earliest is None or row.due_at < earliest):
                        earliest = row.due_at
                if len(rows) < 100:
                    break
                start = rows[-1].index + 1
        return earliest

    # -------------------------------------------------------------- decide + save

    def _flow(self, name: str) -> Flow:
        flow = self.flows.flows.get(name)
        if flow is None:
            raise NotFoundError(f"flow {name!r} is not in flows.yaml (known: {', '.join(sorted(self.flows.flows))})")
        return flow

    def _decide_and_save(
        self, message: Message, observation: Observation | None, redelivered: bool, current: _Loaded | None = None
    ) -> tuple[_Loaded, Flow, Decision] | None:
        """Decide ``observation`` (or the message itself) and save the result.

        An observation is decided on ``current``, what this handler last loaded or saved: its
        ETags still guard the save, so the run is re-read only after a lost race (and for a
        ``Recheck``, whose point is a fresh look)."""
        for _ in range(MAX_SAVE_TRIES):
            if current is not None and observation is not None and not isinstance(observation, Recheck):
                loaded, current = current, None
            else:
                try:
                    loaded = self._load(message.run_id)
                except NotFoundError:
                    log.warning("%s message for unknown run %s dropped", message.kind, message.run_id)
                    return None
            run = loaded.run
            flow = self._flow(run.flow)
            self._load_instance(loaded, message, observation)
            event: Event
            if observation is None:
                active = 0
                if message.kind in ("start", "rerun") and flow.policies.max_concurrent_runs is not None:
                    active = self._active_runs(run)
                event = Incoming(message, active_runs=active, redelivered=redelivered)
            else:
                event = observation
            decision = decide(run, flow, event, self.clock(), FanOuts(loaded.heads, loaded.rows))
            try:
                if decision.fanout is not None:
                    loaded = self._save_fanout(loaded, decision)
                elif decision.changed:
                    loaded = _Loaded(self.store.save(decision.run), loaded.heads, loaded.rows)
            except ConcurrencyError:
                log.info("run %s changed while deciding %s; deciding again", run.run_id, type(event).__name__)
                if isinstance(observation, InstancesLoaded):
                    observation = Recheck()  # its rows are stale now: look again from state
                continue
            decision.run = loaded.run
            return loaded, flow, decision
        raise ConcurrencyError(f"run {message.run_id}: lost {MAX_SAVE_TRIES} save races in a row; try again later")

    def _load(self, run_id: str) -> _Loaded:
        run = self.store.get(run_id)
        heads: dict[str, FanOut] = {}
        flow = self.flows.flows.get(run.flow)
        if flow is not None and fan_out_steps(flow) and self.instances is not None:
            heads = self.instances.fanouts(run_id)
        return _Loaded(run, heads)

    def _load_instance(self, loaded: _Loaded, message: Message, observation: Observation | None) -> None:
        """The instance row the event is about, unless this handler already has it."""
        if observation is None:
            step, index = (message.step, message.index) if message.kind == "tick" else (None, None)
        else:
            step, index = getattr(observation, "step", None), getattr(observation, "index", None)
        if step is None or index is None or (step, index) in loaded.rows or self.instances is None:
            return
        head = loaded.heads.get(step)
        if head is None:
            return
        row = self.instances.instance(loaded.run.run_id, step, head.epoch, index)
        if row is not None:
            loaded.rows[(step, index)] = row

    def _save_fanout(self, loaded: _Loaded, decision: Decision) -> _Loaded:
        write = decision.fanout
        assert write is not None
        store = self._instance_store()
        head = write.fanout
        if head is None:  # instance rows only: saved under their own ETags, the FanOut row untouched
            head = loaded.heads[write.step]
            _, rows = store.save_instances(loaded.run.run_id, write.instances)
        else:
            head, rows = store.save(head, write.instances)
        heads = {**loaded.heads, write.step: head}
        saved = dict(loaded.rows)
        for row in rows:
            saved[(row.name, row.index)] = row
        return _Loaded(loaded.run, heads, saved)

    def _instance_store(self) -> InstanceStore:
        if self.instances is None:
            raise ValidationError("this flow has for_each steps but no instance store is configured", field="instances")
        return self.instances

    def _active_runs(self, run: Run) -> int:
        running = self.store.list_runs(run.flow, [RunStatus.RUNNING], limit=QUEUED_SCAN_LIMIT)
        return sum(1 for r in running if r.run_id != run.run_id)

    # -------------------------------------------------------------- commands

    def _perform(self, loaded: _Loaded, flow: Flow, command: Command) -> Observation | None:
        run = loaded.run
        if isinstance(command, Launch):
            return self._launch(loaded, flow, command)
        if isinstance(command, Poll):
            return self._poll(run, command)
        if isinstance(command, Send):
            self.queue.send(command.message.with_id(), command.delay_seconds)
        elif isinstance(command, StartQueued):
            self._start_queued(command.flow, flow)
        elif isinstance(command, Cancel):
            self._cancel(run, command)
        elif isinstance(command, Emit):
            self._emit(run, command)
        elif isinstance(command, Resolve):
            values = {name: self._fanout_outputs(run, name) for name in command.sources}
            return Resolved(command.step, command.epoch, values)
        elif isinstance(command, CreateFanOut):
            return self._create_fanout(loaded, command)
        elif isinstance(command, LoadInstances):
            rows = self._instance_store().instances(
                run.run_id,
                command.step,
                command.epoch,
                states=command.states,
                start=command.start,
                limit=command.limit,
            )
            return InstancesLoaded(command.step, command.epoch, rows, command.limit)
        elif isinstance(command, FollowUp):
            return Recheck()
        return None

    def _create_fanout(self, loaded: _Loaded, cmd: CreateFanOut) -> Observation:
        store = self._instance_store()
        fan = cmd.fanout
        store.put_items(fan.run_id, fan.step, fan.epoch, cmd.items)
        try:
            saved, _ = store.save(fan)
        except ConcurrencyError:
            log.info("run %s: fan-out %s epoch %d raced; looking again", fan.run_id, fan.step, fan.epoch)
            return Recheck()
        loaded.heads[fan.step] = saved
        log.info("run %s: step %s fans out over %d items (epoch %d)", fan.run_id, fan.step, fan.total, fan.epoch)
        return FanOutCreated(fan.step, fan.epoch)

    def _cached(self, key: tuple[Any, ...], load: Callable[[], list[Any]]) -> list[Any]:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = load()
        with self._cache_lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    def _fanout_outputs(self, run: Run, step: str) -> list[Any]:
        """A for_each step's outputs: its instances' outputs in item order (None where one did not succeed)."""
        sr = run.step(step)
        if sr.fanout is None or not sr.fanout.total:
            return []
        epoch, total = sr.fanout.epoch, sr.fanout.total
        store = self._instance_store()

        def load() -> list[Any]:
            out: list[Any] = [None] * total
            start = 0
            while start < total:
                page = store.instances(run.run_id, step, epoch, start=start, limit=OUTPUTS_PAGE)
                if not page:
                    break
                for inst in page:
                    if 0 <= inst.index < total and inst.state.value == "succeeded":
                        out[inst.index] = dict(inst.outputs)
                start = page[-1].index + 1
            return out

        if not sr.state.terminal:  # still running: not final, never cached
            return load()
        return self._cached(("outputs", run.run_id, step, epoch), load)

    def _item(self, run: Run, step: str, epoch: int, index: int) -> Any:
        store = self._instance_store()
        page = index // ITEMS_PER_PAGE
        items = self._cached(
            ("items", run.run_id, step, epoch, page),
            lambda: store.items(run.run_id, step, epoch, page * ITEMS_PER_PAGE, ITEMS_PER_PAGE),
        )
        offset = index - page * ITEMS_PER_PAGE
        if offset >= len(items):
            raise NotFoundError(f"item {index} of step {step} (epoch {epoch}) is not stored")
        return items[offset]

    def _launch(self, loaded: _Loaded, flow: Flow, cmd: Launch) -> Observation:
        from shared.flows.argv import render_env, render_step_params

        run = loaded.run
        try:
            spec = flow.step(cmd.step)
        except KeyError:
            return LaunchFailed(cmd.step, cmd.attempt, f"step {cmd.step} is not in flow {run.flow}", False, cmd.index)
        try:
            raw = spec.params.model_dump(mode="json")
            sources = fanout_refs(raw, fan_out_steps(flow))
            outputs = {name: self._fanout_outputs(run, name) for name in sorted(sources)}
            item: Any = None
            if cmd.index is not None:
                head = loaded.heads.get(cmd.step)
                if head is None:
                    raise NotFoundError(f"step {cmd.step} has no fan-out to launch instance {cmd.index} of")
                item = self._item(run, cmd.step, head.epoch, cmd.index)
            scope = template_scope(run, flow, outputs, item=item, index=cmd.index)
            # one rule for what reaches a process: shared.flows.argv
            params = render_step_params(spec.kind, raw, scope)
            env = render_env(getattr(spec, "env", None), scope)
        except ConveyorError as exc:  # TemplateError is a ValidationError
            return LaunchFailed(cmd.step, cmd.attempt, str(exc), exc.retryable, cmd.index)
        attrs: dict[str, Any] = {"attempt": cmd.attempt, "job": cmd.key, "kind": spec.kind}
        if cmd.index is not None:
            attrs["index"] = cmd.index
        with self._span("step.launch", run, cmd.step, **attrs) as span:
            request = LaunchRequest(
                run_id=run.run_id,
                flow=run.flow,
                step=cmd.step,
                kind=spec.kind,
                key=cmd.key,
                attempt=cmd.attempt,
                params=params,
                traceparent=span.traceparent if span is not None else run.traceparent,
                trigger=run.trigger.template_scope(),
                steps=earlier_steps(run),
                model=flow.model.model_dump() if flow.model is not None else None,
                scope=scope,
                env=env,
                index=cmd.index,
                item=item,
            )
            try:
                result = self.backend(spec.kind).launch(request)
            except ConveyorError as exc:
                _fail(span, exc)
                log.warning("run %s step %s launch failed (retryable=%s): %s", run.run_id, cmd.step, exc.retryable, exc)
                return LaunchFailed(cmd.step, cmd.attempt, str(exc), exc.retryable, cmd.index)
            except Exception as exc:  # unknown errors are permanent for a launch
                _fail(span, exc)
                log.exception("run %s step %s launch raised", run.run_id, cmd.step)
                return LaunchFailed(cmd.step, cmd.attempt, f"{type(exc).__name__}: {exc}", False, cmd.index)
            if span is not None:
                span.set("remote_id", result.remote_id)
                span.set("reattached", result.reattached)
        return Launched(cmd.step, cmd.attempt, result, cmd.index)

    def _poll(self, run: Run, cmd: Poll) -> Observation:
        kind = run.step(cmd.step).kind
        attrs: dict[str, Any] = {"attempt": cmd.attempt, "remote_id": cmd.remote_id}
        if cmd.index is not None:
            attrs["index"] = cmd.index
        with self._span("step.poll", run, cmd.step, **attrs) as span:
            try:
                status = self.backend(kind).poll(cmd.remote_id)
            except ConveyorError as exc:
                _fail(span, exc)
                log.warning("run %s step %s poll failed (retryable=%s): %s", run.run_id, cmd.step, exc.retryable, exc)
                return PollFailed(cmd.step, cmd.attempt, str(exc), exc.retryable, cmd.index)
            except Exception as exc:
                _fail(span, exc)
                log.exception("run %s step %s poll raised", run.run_id, cmd.step)
                return PollFailed(cmd.step, cmd.attempt, f"{type(exc).__name__}: {exc}", False, cmd.index)
            if span is not None:
                span.set("state", status.state)
        return Polled(cmd.step, cmd.attempt, status, cmd.index)

    def _start_queued(self, flow_name: str, flow: Flow) -> None:
        """Send start messages to the oldest queued runs, as many as there are free slots (at least one)."""
        queued = self.store.list_runs(flow_name, [RunStatus.QUEUED], limit=QUEUED_SCAN_LIMIT)
        if not queued:
            return
        queued.sort(key=lambda r: r.created_at)
        limit = flow.policies.max_concurrent_runs
        if limit is None:
            n = len(queued)
        else:
            running = len(self.store.list_runs(flow_name, [RunStatus.RUNNING], limit=QUEUED_SCAN_LIMIT))
            n = max(1, limit - running)
        for r in queued[:n]:
            self.queue.send(start_message(r))

    def _cancel(self, run: Run, cmd: Cancel) -> None:
        try:
            self.backend(run.step(cmd.step).kind).cancel(cmd.remote_id)
        except Exception:
            log.warning("run %s step %s: cancelling %s failed", run.run_id, cmd.step, cmd.remote_id, exc_info=True)

    def _reconcile_events(self, run_id: str) -> None:
        """A redelivery may follow a crash between a save and its Emits: re-record those events."""
        assert self.events is not None
        try:
            self.events.reconcile(self.store.get(run_id))
        except Exception:  # lifecycle events never fail the message
            log.debug("run %s: lifecycle events not reconciled", run_id, exc_info=True)

    def _emit(self, run: Run, cmd: Emit) -> None:
        level = logging.WARNING if cmd.name in ("step.failed", "step.retrying") else logging.INFO
        log.log(level, "%s", event_text(run, cmd))
        if self.events is not None:
            self.events.on_emit(run, cmd.name, cmd.attributes)  # never raises
        if self.telemetry is None:
            return
        try:
            self.telemetry.event(cmd.name, traceparent=run.traceparent, run_id=run.run_id, attributes=cmd.attributes)
        except Exception:
            log.warning("telemetry event %s failed", cmd.name, exc_info=True)

    @contextmanager
    def _span(self, name: str, run: Run, step: str, **attributes: Any) -> Iterator[Span | None]:
        if self.telemetry is None:
            yield None
            return
        attrs = {"run_id": run.run_id, "flow": run.flow, "step": step, **attributes}
        with self.telemetry.span(name, traceparent=run.traceparent, run_id=run.run_id, attributes=attrs) as span:
            yield span


def _fail(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        span.fail(f"{type(exc).__name__}: {exc}")


__all__ = ["Executor", "earlier_steps", "parse_message", "template_scope"]


def _seconds(value: Any) -> str:
    return f"{float(value):.1f}s" if isinstance(value, int | float) else "?"


def event_text(run: Run, cmd: Emit) -> str:
    """One readable log line for an engine event (the ``conveyor up`` console shows these)."""
    a = cmd.attributes
    head = f"run {run.run_id[:12]} {run.flow}"
    step = f"{head} step {a.get('step')}"
    if cmd.name == "run.started":
        again = f", rerun {a.get('reruns')} from {a.get('from_step')}" if a.get("from_step") else ""
        return f"{head} started ({a.get('trigger')}{again})"
    if cmd.name == "run.queued":
        return f"{head} queued: {a.get('active_runs')} of at most {a.get('limit')} runs are active"
    if cmd.name == "step.launched":
        again = ", reattached" if a.get("reattached") else ""
        return f"{step} launched (attempt {a.get('attempt')}{again}): {a.get('remote_id')}"
    if cmd.name == "step.succeeded":
        return f"{step} succeeded (attempt {a.get('attempt')}, {_seconds(a.get('duration_seconds'))})"
    if cmd.name == "step.retrying":
        return f"{step} attempt {a.get('attempt')} failed, retrying in {_seconds(a.get('delay'))}: {a.get('error')}"
    if cmd.name == "step.failed":
        took = _seconds(a.get("duration_seconds"))
        return f"{step} failed (attempt {a.get('attempt')}, {took}): {a.get('error')}"
    if cmd.name == "run.finished":
        why = f": {a['error']}" if a.get("error") else ""
        return f"{head} {a.get('status')} in {_seconds(a.get('duration_seconds'))}{why}"
    return f"{head} {cmd.name} " + " ".join(f"{k}={v}" for k, v in a.items())
