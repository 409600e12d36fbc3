"""In-memory test doubles of the ports, for unit tests (no network, no processes).

They honour the ports' contracts (create-once, ETag concurrency, scheduled delivery,
idempotent launch) so that unit tests exercise the same rules the real adapters enforce.
The real adapters are tested against Azurite in tests/functional.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.engine.model import FanOut, InstanceRun, Message, Run, RunStatus, StepState
from shared.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.events.base import CloudEventJson, Outbox, OutboxEntry
from shared.queue.base import DeadLetter, Received, ReplayReport, WorkQueue, wanted
from shared.store.base import MAX_INSTANCES_PER_SAVE, InstanceStore, PurgeReport, RunStore


class MemoryRunStore(RunStore):
    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str]] = {}  # run_id -> (etag, json)
        self.creates = 0
        self.saves = 0

    def create_if_absent(self, run: Run) -> bool:
        if run.run_id in self.rows:
            return False
        etag = uuid.uuid4().hex
        self.rows[run.run_id] = (etag, run.model_dump_json())
        run.etag = etag
        self.creates += 1
        return True

    def get(self, run_id: str) -> Run:
        if run_id not in self.rows:
            raise NotFoundError(f"run {run_id} not found")
        etag, doc = self.rows[run_id]
        run = Run.model_validate_json(doc)
        run.etag = etag
        return run

    def save(self, run: Run) -> Run:
        current = self.rows.get(run.run_id)
        if current is None:
            raise NotFoundError(f"run {run.run_id} not found")
        if run.etag != current[0]:
            raise ConcurrencyError(f"run {run.run_id} changed since it was read")
        etag = uuid.uuid4().hex
        saved = run.model_copy(update={"version": run.version + 1})
        self.rows[run.run_id] = (etag, saved.model_dump_json())
        saved.etag = etag
        self.saves += 1
        return saved

    def list_runs(
        self,
        flow: str | None = None,
        statuses: Iterable[RunStatus] | None = None,
        limit: int = 100,
        *,
        created_before: datetime | None = None,
    ) -> list[Run]:
        wanted = set(statuses) if statuses is not None else None
        runs = [self.get(rid) for rid in self.rows]
        runs = [r for r in runs if (flow is None or r.flow == flow) and (wanted is None or r.status in wanted)]
        runs = [r for r in runs if created_before is None or r.created_at < created_before]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    def purge(
        self,
        created_before: datetime,
        statuses: Iterable[RunStatus],
        *,
        dry_run: bool = False,
        limit: int | None = None,
    ) -> PurgeReport:
        wanted = [RunStatus(s) for s in statuses]
        if any(not s.terminal for s in wanted):
            raise ValidationError("only finished runs can be purged", field="status")
        report = PurgeReport(created_before=created_before, statuses=[s.value for s in wanted], dry_run=dry_run)
        matched = self.list_runs(statuses=wanted, limit=limit or len(self.rows) or 1, created_before=created_before)
        report.matched = len(matched)
        report.run_ids = [r.run_id for r in matched]
        if not dry_run:
            for r in matched:
                del self.rows[r.run_id]
            report.deleted = len(matched)
        return report


class MemoryInstanceStore(InstanceStore):
    """Fan-out rows in dicts, with the port's all-or-nothing ETag save."""

    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], tuple[str, str]] = {}  # (run, step) -> (etag, json)
        self.rows: dict[tuple[str, str, int, int], tuple[str, str]] = {}  # (run, step, epoch, index)
        self.item_lists: dict[tuple[str, str, int], list[Any]] = {}
        self.saves = 0

    def fanouts(self, run_id: str) -> dict[str, FanOut]:
        out = {}
        for (rid, step), (etag, doc) in self.heads.items():
            if rid == run_id:
                out[step] = FanOut.model_validate_json(doc)
                out[step].etag = etag
        return out

    def instance(self, run_id: str, step: str, epoch: int, index: int) -> InstanceRun | None:
        got = self.rows.get((run_id, step, epoch, index))
        if got is None:
            return None
        inst = InstanceRun.model_validate_json(got[1])
        inst.etag = got[0]
        return inst

    def instances(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        states: Iterable[StepState] | None = None,
        start: int = 0,
        limit: int = 100,
    ) -> list[InstanceRun]:
        wanted = set(states) if states is not None else None
        keys = sorted(k for k in self.rows if k[:3] == (run_id, step, epoch) and k[3] >= start)
        out = []
        for k in keys:
            inst = self.instance(*k)
            assert inst is not None
            if wanted is None or inst.state in wanted:
                out.append(inst)
            if len(out) >= limit:
                break
        return out

    def save(self, fanout: FanOut, instances: Iterable[InstanceRun] = ()) -> tuple[FanOut, list[InstanceRun]]:
        rows = list(instances)
        head_key = (fanout.run_id, fanout.step)
        current = self.heads.get(head_key)
        if (current[0] if current else None) != fanout.etag:
            raise ConcurrencyError(f"fan-out {fanout.step} of run {fanout.run_id} changed")
        self._check(fanout.run_id, rows)
        head = fanout.model_copy(update={"etag": uuid.uuid4().hex})
        self.heads[head_key] = (head.etag or "", fanout.model_dump_json())
        return head, self._write(fanout.run_id, rows)

    def save_instances(self, run_id: str, instances: Iterable[InstanceRun]) -> tuple[None, list[InstanceRun]]:
        rows = list(instances)
        self._check(run_id, rows)
        return None, self._write(run_id, rows)

    def _check(self, run_id: str, rows: list[InstanceRun]) -> None:
        if len(rows) > MAX_INSTANCES_PER_SAVE:
            raise ValidationError(f"at most {MAX_INSTANCES_PER_SAVE} instances per save", field="instances")
        for inst in rows:
            got = self.rows.get((run_id, inst.name, inst.epoch, inst.index))
            if (got[0] if got else None) != inst.etag:
                raise ConcurrencyError(f"instance {inst.name}[{inst.index}] of run {run_id} changed")

    def _write(self, run_id: str, rows: list[InstanceRun]) -> list[InstanceRun]:
        saved = []
        for inst in rows:
            new = inst.model_copy(update={"etag": uuid.uuid4().hex})
            self.rows[(run_id, inst.name, inst.epoch, inst.index)] = (new.etag or "", inst.model_dump_json())
            saved.append(new)
        self.saves += 1
        return saved

    def put_items(self, run_id: str, step: str, epoch: int, items: list[Any]) -> None:
        self.item_lists[(run_id, step, epoch)] = list(items)

    def items(self, run_id: str, step: str, epoch: int, start: int, count: int) -> list[Any]:
        return list(self.item_lists.get((run_id, step, epoch), [])[start : start + count])


@dataclass
class _Queued:
    message: Message
    visible_at: float
    dequeues: int = 0
    seq: int = 0


class MemoryQueue(WorkQueue):
    """A queue with a manual clock: ``advance(seconds)`` makes scheduled messages visible."""

    def __init__(self, max_delivery_count: int = 5) -> None:
        self.now = 0.0
        self.items: list[_Queued] = []
        self.sent: list[tuple[Message, float]] = []
        self.dead: list[tuple[Message, str, str]] = []
        self.max_delivery_count = max_delivery_count
        self._seq = itertools.count()

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        message = message.with_id()
        self.sent.append((message, delay_seconds))
        self.items.append(_Queued(message, self.now + max(0.0, delay_seconds), seq=next(self._seq)))

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        visible = sorted((q for q in self.items if q.visible_at <= self.now), key=lambda q: (q.visible_at, q.seq))
        out = []
        for q in visible[:max_messages]:
            q.dequeues += 1
            q.visible_at = self.now + visibility_timeout
            out.append(Received(q.message, q.dequeues, q))
        return out

    def complete(self, received: Received) -> None:
        if received.handle in self.items:
            self.items.remove(received.handle)

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        self.complete(received)
        self.dead.append((received.message, reason, description))

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def _dead_entries(self) -> list[DeadLetter]:
        return [
            DeadLetter(
                id=str(i),
                message_id=m.message_id,
                reason=reason,
                description=description,
                delivery_count=0,
                body=m.model_dump_json(),
                message=m,
            )
            for i, (m, reason, description) in enumerate(self.dead)
        ]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self._dead_entries()[:limit]

    def replay_dead_letters(self, ids: Collection[str] | None = None, flow: str | None = None) -> ReplayReport:
        report = ReplayReport()
        keep = []
        seen: set[str] = set()
        for entry, dead in zip(self._dead_entries(), self.dead, strict=True):
            if wanted(entry, ids, flow) and entry.message is not None:
                seen.update((entry.id, entry.message_id))
                self.send(entry.message)
                report.replayed.append(entry)
            else:
                keep.append(dead)
        self.dead = keep
        report.missing = sorted(set(ids or ()) - seen)
        return report

    def next_visible_in(self) -> float | None:
        if not self.items:
            return None
        return max(0.0, min(q.visible_at for q in self.items) - self.now)


@dataclass
class FakeJob:
    key: str
    request: LaunchRequest
    polls_left: int
    outcome: StepStatus
    cancelled: bool = False


@dataclass
class ScriptedBackend(JobBackend):
    """Runs nothing: each launched job finishes after ``polls`` polls with a scripted outcome.

    ``outcomes`` maps (step, attempt) to a StepStatus; default is success with
    ``{"result": f"{step}-{attempt}"}`` (a databricks step's output) as outputs. An instance of a for_each step looks in
    ``instance_outcomes`` at (step, index, attempt) first; its default outputs are
    ``{"result": f"{step}[{index}]-{attempt}", "item": item}``. Counts launches per key.
    """

    kind: str = "scripted"
    polls: int = 1
    outcomes: dict[tuple[str, int], StepStatus] = field(default_factory=dict)
    launch_errors: dict[tuple[str, int], Exception] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    launches: list[str] = field(default_factory=list)  # keys, one per *new* job
    instance_outcomes: dict[tuple[str, int, int], StepStatus] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)  # keys, in the order they were cancelled

    def launch(self, request: LaunchRequest) -> LaunchResult:
        err = self.launch_errors.get((request.step, request.attempt))
        if err is not None:
            raise err
        if request.key in self.jobs:
            return LaunchResult(remote_id=request.key, reattached=True)
        if request.index is not None:
            outcome = self.instance_outcomes.get(
                (request.step, request.index, request.attempt),
                StepStatus(
                    "succeeded",
                    outputs={"result": f"{request.step}[{request.index}]-{request.attempt}", "item": request.item},
                ),
            )
        else:
            outcome = self.outcomes.get(
                (request.step, request.attempt),
                StepStatus("succeeded", outputs={"result": f"{request.step}-{request.attempt}"}),
            )
        self.jobs[request.key] = FakeJob(request.key, request, self.polls, outcome)
        self.launches.append(request.key)
        return LaunchResult(remote_id=request.key)

    def poll(self, remote_id: str) -> StepStatus:
        job = self.jobs[remote_id]
        if job.cancelled:
            return StepStatus("cancelled")
        if job.polls_left > 0:
            job.polls_left -= 1
            return StepStatus("running", progress={"done": 0, "total": 1})
        return job.outcome

    def cancel(self, remote_id: str) -> None:
        if remote_id in self.jobs and not self.jobs[remote_id].cancelled:
            self.jobs[remote_id].cancelled = True
            self.cancelled.append(remote_id)

    def launches_per_step(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for key in self.launches:
            step = self.jobs[key].request.step
            counts[step] = counts.get(step, 0) + 1
        return counts


class MemoryOutbox(Outbox):
    """The outbox contract in memory: insert-if-absent by id, tombstones, leases by version."""

    def __init__(self) -> None:
        self.rows: dict[str, OutboxEntry] = {}
        self.versions: dict[str, int] = {}
        self.delivered: set[str] = set()
        self.expired: dict[str, str] = {}
        self.fail_adds = 0  # the next add calls that raise (the table is down)

    def add(
        self, events: list[CloudEventJson], sinks: list[str], now: datetime, *, skip_delivered: bool = False
    ) -> list[bool]:
        if self.fail_adds:
            self.fail_adds -= 1
            raise ConnectionError("outbox table unavailable")
        out = []
        for e in events:
            eid = str(e["id"])
            if eid in self.rows or (skip_delivered and eid in self.delivered):
                out.append(False)
                continue
            self.rows[eid] = OutboxEntry(dict(e), list(sinks), 0, now, now, handle=0)
            self.versions[eid] = 0
            out.append(True)
        return out

    def due(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        due = [e for i, e in self.rows.items() if i not in self.expired and e.next_at <= now]
        return [
            OutboxEntry(dict(e.event), list(e.pending), e.attempts, e.first_at, e.next_at, e.last_error, e.handle)
            for e in sorted(due, key=lambda e: e.first_at)[:limit]
        ]

    def _bump(self, entry: OutboxEntry) -> bool:
        if self.versions.get(entry.id) != entry.handle:
            return False
        self.versions[entry.id] += 1
        entry.handle = self.versions[entry.id]
        return True

    def claim(self, entry: OutboxEntry, until: datetime) -> OutboxEntry | None:
        if not self._bump(entry):
            return None
        entry.next_at = until
        self.rows[entry.id] = entry
        return entry

    def retry(self, entry: OutboxEntry, pending: list[str], next_at: datetime, error: str) -> None:
        if self._bump(entry):
            entry.pending, entry.next_at, entry.last_error = list(pending), next_at, error
            entry.attempts += 1
            self.rows[entry.id] = entry

    def done(self, entry: OutboxEntry) -> None:
        self.delivered.add(entry.id)
        if self.versions.get(entry.id) == entry.handle:
            self.rows.pop(entry.id, None)

    def expire(self, entry: OutboxEntry, error: str) -> None:
        self.expired[entry.id] = error

    def purge(self, before: datetime) -> int:
        n = len(self.delivered)
        self.delivered.clear()
        return n
