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
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pydantic

from shared.backends.base import JobBackend, LaunchRequest
from shared.clock import Clock, utcnow
from shared.engine.commands import Cancel, Command, Emit, Launch, Poll, Send, StartQueued
from shared.engine.decide import (
    Decision,
    Event,
    Incoming,
    Launched,
    LaunchFailed,
    Observation,
    Polled,
    PollFailed,
    decide,
    start_message,
)
from shared.engine.model import MAX_START_BATCH, Message, Run, RunStatus, StepState
from shared.errors import ConcurrencyError, ConveyorError, NotFoundError, ValidationError
from shared.flows.model import Flow, FlowsFile
from shared.queue.base import WorkQueue
from shared.store.base import RunStore

if TYPE_CHECKING:
    from shared.events.publisher import LifecycleEvents
    from shared.telemetry.base import Span, Telemetry
    from shared.wiring import Services

log = logging.getLogger("conveyor.engine")

MAX_SAVE_TRIES = 5
MAX_EVENTS_PER_MESSAGE = 64  # observations fed back for one message (a guard, never reached normally)
QUEUED_SCAN_LIMIT = 1000


def parse_message(body: str | bytes) -> Message:
    """A queue body as a Message; anything malformed raises ValidationError naming the field."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError("message body is not UTF-8", field="body") from exc
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"message body is not JSON: {exc.msg} at position {exc.pos}", field="body") from exc
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
    if message.kind == "tick":
        for name in ("step", "attempt", "tick"):
            if getattr(message, name) is None:
                raise ValidationError("a tick message needs step, attempt and tick", field=name)
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
        events: LifecycleEvents | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.flows = flows
        self.backend = backend
        self.telemetry = telemetry
        self.clock = clock
        self.events = events  # lifecycle CloudEvents out (shared.events), fed from Emit

    @classmethod
    def from_services(cls, services: Services) -> Executor:
        return cls(
            services.store, services.queue, services.flows, services.backend, services.telemetry, events=services.events
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
        latest: Run | None = None  # the run as last loaded or saved, with its ETag
        while events:
            observation = events.popleft()
            handled += 1
            if handled > MAX_EVENTS_PER_MESSAGE:
                log.error("run %s: more than %d events for one message; stopping", message.run_id, handled - 1)
                return
            outcome = self._decide_and_save(message, observation, redelivered, latest)
            if outcome is None:
                return
            run, flow, decision = outcome
            latest = run
            for command in decision.commands:
                produced = self._perform(run, flow, command)
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

    def resume_stalled(self, older_than_seconds: float = 900.0, limit: int = 100) -> list[str]:
        """Sweeper hook: nudge runs whose next message was lost for good (e.g. dead-lettered).

        A RUNNING run not saved for ``older_than_seconds`` gets a redelivered-style start, which
        re-issues its pending side effect (same launch key, or the current tick); a QUEUED one
        gets a plain start (it runs if a slot is free). Returns the run ids nudged.
        """
        now = self.clock()
        nudged: list[str] = []
        for status in (RunStatus.RUNNING, RunStatus.QUEUED):
            for run in self.store.list_runs(None, [status], limit=limit):
                if (now - run.updated_at).total_seconds() < older_than_seconds:
                    continue
                log.warning("run %s: %s and untouched since %s; resuming", run.run_id, status.value, run.updated_at)
                self.handle(start_message(run), delivery_count=2 if status is RunStatus.RUNNING else 1)
                nudged.append(run.run_id)
        return nudged

    # -------------------------------------------------------------- decide + save

    def _flow(self, name: str) -> Flow:
        flow = self.flows.flows.get(name)
        if flow is None:
            raise NotFoundError(f"flow {name!r} is not in flows.yaml (known: {', '.join(sorted(self.flows.flows))})")
        return flow

    def _decide_and_save(
        self, message: Message, observation: Observation | None, redelivered: bool, current: Run | None = None
    ) -> tuple[Run, Flow, Decision] | None:
        """Decide ``observation`` (or the message itself) and save the result.

        An observation is decided on ``current``, the copy this handler last loaded or saved:
        its ETag still guards the save, so the run is re-read only after a lost race."""
        for _ in range(MAX_SAVE_TRIES):
            if current is not None and observation is not None:
                run, current = current, None
            else:
                try:
                    run = self.store.get(message.run_id)
                except NotFoundError:
                    log.warning("%s message for unknown run %s dropped", message.kind, message.run_id)
                    return None
            flow = self._flow(run.flow)
            event: Event
            if observation is None:
                active = 0
                if message.kind in ("start", "rerun") and flow.policies.max_concurrent_runs is not None:
                    active = self._active_runs(run)
                event = Incoming(message, active_runs=active, redelivered=redelivered)
            else:
                event = observation
            decision = decide(run, flow, event, self.clock())
            if not decision.changed:
                return run, flow, decision
            try:
                decision.run = self.store.save(decision.run)
            except ConcurrencyError:
                log.info("run %s changed while deciding %s; deciding again", run.run_id, type(event).__name__)
                continue
            return decision.run, flow, decision
        raise ConcurrencyError(f"run {message.run_id}: lost {MAX_SAVE_TRIES} save races in a row; try again later")

    def _active_runs(self, run: Run) -> int:
        running = self.store.list_runs(run.flow, [RunStatus.RUNNING], limit=QUEUED_SCAN_LIMIT)
        return sum(1 for r in running if r.run_id != run.run_id)

    # -------------------------------------------------------------- commands

    def _perform(self, run: Run, flow: Flow, command: Command) -> Observation | None:
        if isinstance(command, Launch):
            return self._launch(run, flow, command)
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
        return None

    def _launch(self, run: Run, flow: Flow, cmd: Launch) -> Observation:
        from shared.flows.template import render

        try:
            spec = flow.step(cmd.step)
        except KeyError:
            return LaunchFailed(cmd.step, cmd.attempt, f"step {cmd.step} is not in flow {run.flow}", False)
        try:
            params = render(spec.params.model_dump(mode="json"), template_scope(run, flow), field="params")
        except ConveyorError as exc:  # TemplateError is a ValidationError
            return LaunchFailed(cmd.step, cmd.attempt, str(exc), False)
        with self._span("step.launch", run, cmd.step, attempt=cmd.attempt, job=cmd.key, kind=spec.kind) as span:
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
            )
            try:
                result = self.backend(spec.kind).launch(request)
            except ConveyorError as exc:
                _fail(span, exc)
                log.warning("run %s step %s launch failed (retryable=%s): %s", run.run_id, cmd.step, exc.retryable, exc)
                return LaunchFailed(cmd.step, cmd.attempt, str(exc), exc.retryable)
            except Exception as exc:  # unknown errors are permanent for a launch
                _fail(span, exc)
                log.exception("run %s step %s launch raised", run.run_id, cmd.step)
                return LaunchFailed(cmd.step, cmd.attempt, f"{type(exc).__name__}: {exc}", False)
            if span is not None:
                span.set("remote_id", result.remote_id)
                span.set("reattached", result.reattached)
        return Launched(cmd.step, cmd.attempt, result)

    def _poll(self, run: Run, cmd: Poll) -> Observation:
        kind = run.step(cmd.step).kind
        with self._span("step.poll", run, cmd.step, attempt=cmd.attempt, remote_id=cmd.remote_id) as span:
            try:
                status = self.backend(kind).poll(cmd.remote_id)
            except ConveyorError as exc:
                _fail(span, exc)
                log.warning("run %s step %s poll failed (retryable=%s): %s", run.run_id, cmd.step, exc.retryable, exc)
                return PollFailed(cmd.step, cmd.attempt, str(exc), exc.retryable)
            except Exception as exc:
                _fail(span, exc)
                log.exception("run %s step %s poll raised", run.run_id, cmd.step)
                return PollFailed(cmd.step, cmd.attempt, f"{type(exc).__name__}: {exc}", False)
            if span is not None:
                span.set("state", status.state)
        return Polled(cmd.step, cmd.attempt, status)

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
        log.log(level, "%s %s", cmd.name, cmd.attributes)
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


def earlier_steps(run: Run) -> dict[str, dict[str, Any]]:
    """``{name: {"outputs", "remote_id", "state"}}`` of the run's succeeded steps."""
    return {
        s.name: {"outputs": dict(s.outputs), "remote_id": s.remote_id, "state": s.state.value}
        for s in run.steps
        if s.state is StepState.SUCCEEDED
    }


def template_scope(run: Run, flow: Flow) -> dict[str, Any]:
    """What ``${...}`` in step params can see (see shared.flows.template)."""
    return {
        "trigger": run.trigger.template_scope(),
        "steps": earlier_steps(run),
        "run": {"id": run.run_id, "flow": run.flow, "reruns": run.reruns},
        "flow": {"name": run.flow, "model": flow.model.model_dump() if flow.model is not None else None},
    }


__all__ = ["Executor", "earlier_steps", "parse_message", "template_scope"]
