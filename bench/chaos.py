"""Chaos: SIGKILL the local host's whole process group at random points while runs are in flight.

``python -m bench.chaos`` (``make chaos``) runs two phases on one Azurite (on free ports):

1. **kills**: ``conveyor up`` (its own process group) runs a 4-step flow (databricks, batch,
   register, deploy) for ``--runs`` runs, triggered over HTTP through the same kills (a trigger
   cut by a kill is retried with its idempotency key, as a client would). The host is killed with
   ``killpg(SIGKILL)`` at a random point of each of its lives (during start-up too) and started
   again at once, ``--kills`` times; then it is left alone until every run has ended.
2. **faults**: the same flow with ``CONVEYOR_FAULT_RATE=0.2`` (every storage request and backend
   call fails one time in five: 429, 503, timeouts, some after the call went through) and no
   kills, plus one run of a flow whose step fails for good: every chaos run must succeed, the
   broken one fail with its own reason.

Checked, and printed as figures: runs lost (not succeeded), duplicate launches (a step that
needed a second attempt or key), registrations per key, re-executions of finished work (the
job scripts log ``start``/``end`` per unit: a ``start`` after an ``end`` of the same unit),
re-executions of work killed mid-flight (a ``start`` after a ``start``, per kill), the drain time
after the last kill and its bound. The bound is derived from the settings and the flow, not a
constant: the visibility timeout + the stall margin + the sweep interval (a message the dead
host held comes back, or a lost one is found, by then) + twice the time one undisturbed run of
the flow took, measured first in the same process (what is left of the runs in flight).
``tests/functional/test_chaos.py`` runs a bounded version in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.local.azurite import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FLOW = "chaos"
BROKEN = "broken"
MODEL = "chaos-model"
BROKEN_REASON = "the input is bad beyond repair"
INPUTS = 3  # batch tasks per run
DRAIN_GOAL_SECONDS = 60.0  # issue 10: every run ended within a minute of the last kill, default settings
POLL = {"initial_seconds": 1, "multiplier": 1.5, "max_seconds": 3}


# ---------------------------------------------------------------- the project the host runs


def write_project(root: Path, log: Path) -> None:
    """flows.yaml, the job scripts (each logs start/end of its unit to ``log``) and a model folder."""
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "model").mkdir(exist_ok=True)
    (root / "model" / "MLmodel").write_text("flavors: {}\n", encoding="utf-8")
    (root / "model" / "weights.txt").write_text("0.5\n", encoding="utf-8")
    (root / "jobs" / "etl.py").write_text(
        textwrap.dedent(
            """
            import json, os, sys, time
            log, unit = sys.argv[1], "databricks/" + os.environ["DATABRICKS_RUN_ID"]
            def note(event):
                with open(log, "a") as f:
                    f.write(json.dumps({"unit": unit, "event": event, "pid": os.getpid()}) + "\\n")
            note("start")
            time.sleep(0.8)
            note("end")
            dbutils.notebook.exit(json.dumps({"rows": 10}))
            """
        ),
        encoding="utf-8",
    )
    task = (
        'printf \'{"unit": "batch/%s/%s", "event": "start"}\\n\' "$AZ_BATCH_JOB_ID" "$1" >> "$3"; '
        'sleep 0.6; echo scored > "$2/scored.txt"; '
        'printf \'{"unit": "batch/%s/%s", "event": "end"}\\n\' "$AZ_BATCH_JOB_ID" "$1" >> "$3"'
    )
    poll = json.dumps(POLL)
    flows = f"""\
version: 1
flows:
  {FLOW}:
    triggers: [{{kind: manual}}]
    model: {{name: {MODEL}, metric: r2, direction: maximize}}
    steps:
      - name: etl
        kind: databricks
        poll: {poll}
        params: {{python_file: jobs/etl.py, parameters: [{json.dumps(str(log))}, "${{run.id}}"]}}
      - name: score
        kind: batch
        poll: {poll}
        params:
          command: [sh, -c, {json.dumps(task)}, sh, "{{task_id}}", "{{output_dir}}", {json.dumps(str(log))}]
          inputs: chaosin/
          output_container: chaosout
      - name: register
        kind: register
        poll: {poll}
        params: {{model_uri: {json.dumps(str(root / "model"))}, metrics: {{r2: "${{trigger.params.r2}}"}}}}
      - name: deploy
        kind: deploy
        poll: {poll}
        params: {{version: "${{steps.register.outputs.version}}", endpoint: chaos}}
  {BROKEN}:
    triggers: [{{kind: manual}}]
    steps:
      - name: fail
        kind: batch
        poll: {poll}
        params:
          command: [sh, -c, {json.dumps(f'echo "{BROKEN_REASON}" >&2; exit 3')}]
          inputs: chaosin/
          output_container: chaosout
"""
    (root / "flows.yaml").write_text(flows, encoding="utf-8")


# ---------------------------------------------------------------- the host process


@dataclass
class Host:
    """``conveyor up`` in its own process group (as it makes itself), killed with its group."""

    env: dict[str, str]
    logs: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    lives: int = 0

    def start(self) -> None:
        self.lives += 1
        log = open(self.logs / f"host-{self.lives:04d}.log", "wb")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--workers", "2"],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def post(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)

    def trigger(self, flow: str, key: str, params: dict[str, Any], deadline: float) -> int:
        """POST a run until the host takes it (a kill may cut the call: the key makes a retry safe)."""
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            try:
                if self.post(f"/api/flows/{flow}/runs", {"idempotency_key": key, "params": params}) in (200, 202):
                    return tries
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"run {key} could not be triggered")


# ---------------------------------------------------------------- one experiment


@dataclass
class Config:
    runs: int = 40
    kills: int = 100
    min_life: float = 0.5  # seconds a host lives before its kill, drawn uniformly
    max_life: float = 6.0
    # seconds between triggers while the kills go on; None: by the kills' progress (run i is
    # triggered once kills x i / runs kills are done), so that runs are in flight at the last kill
    # however long each trigger call took (a time-based spread finished too early when calls
    # went through at once: nothing was left to drain)
    trigger_every: float | None = None
    fault_rate: float = 0.0
    broken_runs: int = 0  # runs of the flow that fails for good (its reason must be the run's error)
    seed: int = 0
    drain_timeout: float = 600.0
    # the drain goal with default settings (make chaos: 60 s), checked besides the derived bound
    drain_goal: float | None = None


@dataclass
class Report:
    name: str
    runs: int = 0
    succeeded: int = 0
    lost: list[str] = field(default_factory=list)
    kills: int = 0
    lives: int = 0
    chaos_seconds: float = 0.0
    in_flight_at_last_kill: int = 0
    drain_seconds: float | None = None
    bound_seconds: float = 0.0
    drain_goal: float | None = None
    undisturbed_seconds: float = 0.0
    extra_attempts: list[str] = field(default_factory=list)
    registrations: int = 0
    duplicate_registrations: list[str] = field(default_factory=list)
    finished_reexecutions: list[str] = field(default_factory=list)
    killed_reexecutions: int = 0
    recorded_reruns: int = 0  # StepStatus.reruns the backends reported into the runs' histories
    adopted_tasks: int = 0
    poisoned: int = 0
    trigger_retries: int = 0
    broken_errors: list[str] = field(default_factory=list)
    broken_expected: int = 0
    faults: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} runs did not succeed: {', '.join(self.lost[:5])}")
        if self.extra_attempts:
            out.append(f"duplicate launches (a second attempt): {', '.join(self.extra_attempts[:5])}")
        if self.duplicate_registrations:
            out.append(f"duplicate registrations: {', '.join(self.duplicate_registrations[:5])}")
        if self.registrations != self.runs:
            out.append(f"{self.registrations} model versions for {self.runs} runs")
        if self.finished_reexecutions:
            out.append(f"finished work executed again: {', '.join(self.finished_reexecutions[:5])}")
        if self.drain_seconds is None:
            out.append("the runs did not all end")
        elif self.kills and self.drain_seconds > self.bound_seconds:
            out.append(f"drain after the last kill {self.drain_seconds:.1f}s, over its bound {self.bound_seconds:.0f}s")
        elif self.kills and self.drain_goal is not None and self.drain_seconds > self.drain_goal:
            out.append(f"drain after the last kill {self.drain_seconds:.1f}s, over the goal of {self.drain_goal:.0f}s")
        if self.kills and self.drain_goal is not None and not self.in_flight_at_last_kill:
            out.append("no run was in flight at the last kill: the drain measured nothing (trigger the runs later)")
        bad = [e for e in self.broken_errors if BROKEN_REASON not in e]
        if len(self.broken_errors) != self.broken_expected or bad:
            out.append(f"the broken runs did not fail with their reason: {self.broken_errors}")
        return out

    def lines(self) -> list[str]:
        per_kill = self.killed_reexecutions / self.kills if self.kills else 0.0
        drain = f"{self.drain_seconds:.1f}s" if self.drain_seconds is not None else "never"
        if self.kills:
            ending = (
                f"  drain after the last kill {drain}, {self.in_flight_at_last_kill} runs in flight then "
                f"(bound {self.bound_seconds:.0f}s = visibility + margin + sweep + 2 x "
                f"{self.undisturbed_seconds:.1f}s undisturbed run"
                + (f"; goal {self.drain_goal:.0f}s)" if self.drain_goal is not None else ")")
            )
        else:
            ending = (
                f"  every run ended {drain} after the first trigger "
                f"(one undisturbed run: {self.undisturbed_seconds:.1f}s)"
            )
        out = [
            f"{self.name}: {self.runs} runs, {self.succeeded} succeeded, {len(self.lost)} lost; "
            f"{self.kills} kills over {self.chaos_seconds:.0f}s ({self.lives} host lives)",
            ending,
            f"  duplicate launches {len(self.extra_attempts)}, model versions {self.registrations} "
            f"(duplicates {len(self.duplicate_registrations)}), re-executions of finished work "
            f"{len(self.finished_reexecutions)}",
            f"  re-executions of work killed mid-flight {self.killed_reexecutions} "
            f"({per_kill:.2f} per kill; recorded in attempt histories: {self.recorded_reruns}); "
            f"batch tasks adopted from a dead host {self.adopted_tasks}",
            f"  messages dead-lettered {self.poisoned}; trigger calls retried {self.trigger_retries}",
        ]
        if self.faults:
            out.append(f"  injected faults: rate {self.faults}%")
        if self.broken_expected:
            out.append(f"  broken run(s) failed with: {self.broken_errors}")
        return out


def executions(log: Path) -> tuple[list[str], int]:
    """(units started again after they had ended, starts after a start without an end)."""
    events: dict[str, list[str]] = {}
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            events.setdefault(str(rec.get("unit")), []).append(str(rec.get("event")))
    finished_again, killed_again = [], 0
    for unit, evs in events.items():
        ended = False
        for i, ev in enumerate(evs):
            if ev == "start" and ended:
                finished_again.append(unit)
            if ev == "start" and i > 0 and evs[i - 1] == "start":
                killed_again += 1
            ended = ended or ev == "end"
    return finished_again, killed_again


def grace_and_sweep(settings: Settings) -> float:
    return settings.visibility_timeout_seconds + settings.stall_margin_seconds + settings.sweep_interval_seconds


def run_experiment(name: str, cfg: Config, azurite: Settings, work: Path, say: Any = print) -> Report:
    """One experiment (see the module docstring) in ``work``; the host is stopped at the end."""
    from shared.deploy.local_endpoint import stop_server
    from shared.engine.model import RunStatus
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.registry.mlflow_registry import MlflowRegistry
    from shared.store.table import TableRunStore

    rng = random.Random(cfg.seed)
    project, home, logs = work / "project", work / "home", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    execlog = work / "executions.jsonl"
    write_project(project, execlog)
    suffix = f"{cfg.seed:04d}{abs(hash(name)) % 10_000:04d}"
    port, scoring = free_port(), free_port()
    settings = azurite.with_overrides(
        root=project,
        home=home,
        flows_file=project / "flows.yaml",
        queue_name=f"chaos-{suffix}",
        runs_table=f"chaos{suffix}",
        host_port=port,
        scoring_port=scoring,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "AzureWebJobs"))}
    env.update(
        {
            "CONVEYOR_ROOT": str(project),
            "CONVEYOR_HOME": str(home),
            "CONVEYOR_AZURITE_HOST": azurite.azurite_host,
            "CONVEYOR_AZURITE_BLOB_PORT": str(azurite.azurite_blob_port),
            "CONVEYOR_AZURITE_QUEUE_PORT": str(azurite.azurite_queue_port),
            "CONVEYOR_AZURITE_TABLE_PORT": str(azurite.azurite_table_port),
            "CONVEYOR_QUEUE_NAME": settings.queue_name,
            "CONVEYOR_RUNS_TABLE": settings.runs_table,
            "CONVEYOR_HOST_PORT": str(port),
            "CONVEYOR_SCORING_PORT": str(scoring),
            "CONVEYOR_TELEMETRY_EXPORTER": "local",
            "CONVEYOR_FAULT_RATE": str(cfg.fault_rate),
            "CONVEYOR_FAULT_SEED": str(cfg.seed),
            "PYTHONUNBUFFERED": "1",
        }
    )
    from shared.blobs.storage import AzureBlobStore

    blobs = AzureBlobStore.from_settings(settings)
    for i in range(INPUTS):
        blobs.upload("chaosin", f"part-{i}.csv", f"id\n{i}\n".encode())
    store = TableRunStore.from_settings(settings)
    host = Host(env, logs, port)
    report = Report(name=name, faults=round(cfg.fault_rate * 100), drain_goal=cfg.drain_goal)

    def wait_all(ids: list[str], timeout: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            runs = [r for r in store.get_many(ids) if r is not None]
            if len(runs) == len(ids) and all(r.status.terminal for r in runs):
                return time.monotonic() - start
            time.sleep(0.5)
        return None

    try:
        # An undisturbed run first: the measure of what is left of a run in flight at the last kill.
        host.start()
        t0 = time.monotonic()
        report.trigger_retries += host.trigger(FLOW, "undisturbed", {"r2": 0.5}, time.monotonic() + 120) - 1
        first = wait_all([run_id(FLOW, "undisturbed")], cfg.drain_timeout)
        report.undisturbed_seconds = time.monotonic() - t0 if first is not None else cfg.drain_timeout
        report.bound_seconds = grace_and_sweep(settings) + 2 * report.undisturbed_seconds
        say(f"  {name}: one undisturbed run took {report.undisturbed_seconds:.1f}s")

        keys = [f"{name}-{i:03d}" for i in range(cfg.runs)]
        broken = [f"{name}-broken-{i}" for i in range(cfg.broken_runs)]
        ids = [run_id(FLOW, k) for k in keys] + [run_id(BROKEN, k) for k in broken]
        retries: list[int] = []

        triggered: list[str] = []

        def wait_turn(i: int) -> None:
            """Until run ``i``'s turn: its share of the kills done (or its time, with trigger_every)."""
            if not cfg.kills or i == 0:
                return
            if cfg.trigger_every is not None:
                time.sleep(cfg.trigger_every)
                return
            while report.kills < cfg.kills * i // max(1, cfg.runs):
                time.sleep(0.05)

        def triggers() -> None:
            for i, key in enumerate(keys):
                wait_turn(i)
                retries.append(host.trigger(FLOW, key, {"r2": round(rng.uniform(0.1, 0.9), 3)}, time.monotonic() + 600))
                triggered.append(run_id(FLOW, key))
            for key in broken:
                retries.append(host.trigger(BROKEN, key, {}, time.monotonic() + 600))

        feeder = threading.Thread(target=triggers, name="chaos-triggers", daemon=True)
        chaos_start = time.time()
        feeder.start()
        last_kill = chaos_start

        def in_flight() -> int:
            return sum(1 for r in store.get_many(list(triggered)) if r is not None and not r.status.terminal)

        while cfg.kills and (report.kills < cfg.kills or feeder.is_alive()):
            time.sleep(rng.uniform(cfg.min_life, cfg.max_life))
            report.in_flight_at_last_kill = in_flight()
            host.kill()
            last_kill = time.time()
            report.kills += 1
            host.start()
            if report.kills % 10 == 0:
                say(f"  {name}: {report.kills} kills")
        report.chaos_seconds = last_kill - chaos_start
        feeder.join(timeout=600)
        if not cfg.kills:
            last_kill = chaos_start  # no kills: the time from the first trigger to the last run's end
        report.trigger_retries += sum(r - 1 for r in retries)
        if wait_all(ids, cfg.drain_timeout) is not None:
            ended = [r.ended_at for r in store.get_many(ids) if r is not None and r.ended_at is not None]
            if ended:  # from the last kill to the last run's end (as the run documents say)
                report.drain_seconds = max(0.0, max(ended).timestamp() - last_kill)
        report.lives = host.lives

        runs = {rid: r for rid, r in zip(ids, store.get_many(ids), strict=True)}
        chaos_runs = [runs[run_id(FLOW, k)] for k in keys]
        report.runs = len(chaos_runs)
        report.succeeded = sum(1 for r in chaos_runs if r is not None and r.status is RunStatus.SUCCEEDED)
        report.lost = [
            f"{k}:{r.status.value if r else 'missing'}"
            for k, r in zip(keys, chaos_runs, strict=True)
            if r is None or r.status is not RunStatus.SUCCEEDED
        ]
        for k, r in zip(keys, chaos_runs, strict=True):
            if r is None:
                continue
            report.extra_attempts += [f"{k}/{s.name}#{s.attempt}" for s in r.steps if s.attempt > 1]
            report.recorded_reruns += sum(s.host_loss_reruns for s in r.steps)
        report.broken_expected = len(broken)
        for k in broken:
            r = runs[run_id(BROKEN, k)]
            report.broken_errors.append(
                r.error or "" if r is not None and r.status is RunStatus.FAILED else f"{r and r.status}"
            )
        registry = MlflowRegistry.from_settings(settings)
        versions = registry.versions(MODEL) if (home / "mlflow").exists() else []
        keys_of = Counter(v.tags.get("conveyor.key", "") for v in versions)
        report.registrations = sum(1 for v in versions if v.tags.get("conveyor.run_id") in set(ids))
        report.duplicate_registrations = [k for k, n in keys_of.items() if n > 1]
        report.finished_reexecutions, report.killed_reexecutions = executions(execlog)
        for tasks_log in (home / "batch").glob("*/tasks.log"):
            report.adopted_tasks += tasks_log.read_text(encoding="utf-8").count('"ad":1')
        queue = StorageQueueWorkQueue.from_settings(settings)
        report.poisoned = len(queue.peek_poison())
    finally:
        host.stop()
        stop_server(home)
    return report


def run_id(flow: str, key: str) -> str:
    from shared.engine.model import run_id_for

    return run_id_for(flow, "manual", key)


@contextlib.contextmanager
def azurite() -> Iterator[tuple[Settings, Path]]:
    from shared.local.azurite import azurite_on_free_ports

    with (
        tempfile.TemporaryDirectory(prefix="conveyor-chaos-") as tmp,
        azurite_on_free_ports(Path(tmp) / "azurite", ROOT, in_memory=True) as settings,
    ):
        yield settings, Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--fault-runs", type=int, default=20)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    args = parser.parse_args(argv)
    reports = []
    with azurite() as (settings, tmp):
        print(
            f"chaos: seed {args.seed}; {args.runs} runs, {args.kills} kills; then {args.fault_runs} runs "
            f"at {args.fault_rate:.0%} injected faults",
            flush=True,
        )
        kills = Config(runs=args.runs, kills=args.kills, seed=args.seed, drain_goal=DRAIN_GOAL_SECONDS)
        reports.append(run_experiment("kills", kills, settings, tmp / "kills"))
        for line in reports[-1].lines():
            print(line, flush=True)
        faults = Config(runs=args.fault_runs, kills=0, fault_rate=args.fault_rate, broken_runs=1, seed=args.seed + 1)
        reports.append(run_experiment("faults", faults, settings, tmp / "faults"))
        for line in reports[-1].lines():
            print(line, flush=True)
    problems = [f"{r.name}: {p}" for r in reports for p in r.problems()]
    for p in problems:
        print(f"PROBLEM {p}")
    print("chaos: all checks passed" if not problems else f"chaos: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
