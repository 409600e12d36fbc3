"""The ``conveyor`` command: run the local host, drop data, start and inspect runs.

Commands talk to storage directly through ``Services`` (Azurite locally), so they work
whether or not ``conveyor up`` is running; when Azurite is not up, a command that needs it
starts one for its own duration (data persists under ``<home>/azurite``). ``trigger`` goes
through the running host's HTTP API when there is one, exactly like an external caller.

Exit codes: 0 ok; 1 a failure (invalid flows.yaml, storage down, a followed run that did not
succeed); 2 bad input (unknown flow/run/step, malformed arguments). ConveyorErrors print one
line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from shared.cli_ops import register_ops
from shared.errors import ConveyorError, NotFoundError, ValidationError
from shared.terminal import cell, line, log_to_console, make_console, say

if TYPE_CHECKING:
    from rich.progress import Task

    from shared.engine.model import Run, StepRun
    from shared.settings import Settings
    from shared.wiring import Services

app = typer.Typer(
    name="conveyor",
    help="Event-driven data and ML flows: local host, triggers, runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Every value reaches these as text, never as markup (shared/terminal.py).
console = make_console()
err_console = make_console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

STATUS_STYLE = {
    "pending": "yellow",
    "queued": "yellow",
    "launching": "cyan",
    "running": "cyan",
    "retry_wait": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
    "skipped": "dim",
}


# ---------------------------------------------------------------- plumbing


def fail(message: str, code: int = 1) -> NoReturn:
    say(err_console, ("error:", "red"), " ", message)
    raise typer.Exit(code)


def exit_code_for(exc: ConveyorError) -> int:
    """2 for what the user typed wrong (unknown names, invalid values), 1 for everything else."""
    from shared.flows.loader import FlowsFileError

    if isinstance(exc, FlowsFileError):
        return 1
    if isinstance(exc, ValidationError | NotFoundError):
        return 2
    return 1


def friendly(fn: F) -> F:
    """ConveyorErrors become one line on stderr and exit code 1/2; Ctrl-C exits 130."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConveyorError as exc:
            from shared.flows.loader import FlowsFileError

            if isinstance(exc, FlowsFileError):
                say(err_console, str(exc))
                raise typer.Exit(1) from None
            fail(str(exc), exit_code_for(exc))
        except KeyboardInterrupt:
            say(err_console, "interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def version() -> str:
    """The installed package's version (pyproject.toml), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("conveyor")
    except PackageNotFoundError:
        from shared import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        say(console, f"conveyor {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", help="print the version and exit", callback=_print_version, is_eager=True
    ),
) -> None:
    """Event-driven data and ML flows: local host, triggers, runs."""


def load_settings() -> Settings:
    from shared.settings import Settings

    return Settings.from_env()


def storage_reachable(settings: Settings) -> bool:
    from shared.local.azurite import port_open

    if settings.adapter("store") != "local" or (
        settings.storage_connection and settings.storage_connection.strip() != "UseDevelopmentStorage=true"
    ):
        return True  # a real account: nothing to start
    h = settings.azurite_host
    ports = (settings.azurite_blob_port, settings.azurite_queue_port, settings.azurite_table_port)
    return all(port_open(h, p) for p in ports)


@contextlib.contextmanager
def storage(settings: Settings | None = None) -> Iterator[Services]:
    """Services on reachable storage; starts Azurite for the command's duration if needed."""
    from shared.wiring import Services

    settings = settings or load_settings()
    azurite = None
    if not storage_reachable(settings):
        from shared.local.azurite import ensure_azurite

        where = f"{settings.azurite_host}:{settings.azurite_blob_port}"
        say(
            err_console,
            (
                f"Azurite is not running on {where}; starting it for this command (`conveyor up` keeps one running)",
                "dim",
            ),
        )
        azurite = ensure_azurite(settings)
    try:
        yield Services(settings)
    finally:
        if azurite is not None:
            azurite.stop()


def host_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.host_port}"


def host_running(settings: Settings, timeout: float = 1.0) -> bool:
    """True when a Conveyor host answers ``GET /admin/host/status`` with state Running."""
    try:
        with urllib.request.urlopen(f"{host_url(settings)}/admin/host/status", timeout=timeout) as resp:  # noqa: S310
            return bool(json.loads(resp.read() or b"{}").get("state") == "Running")
    except (OSError, ValueError):
        return False


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(  # noqa: S310 - loopback URL built from settings
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
            return int(resp.status), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return int(exc.code), json.loads(raw) if raw else None
        except ValueError:
            return int(exc.code), {"error": {"message": raw.decode("utf-8", "replace")[:300]}}


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (numbers, true, lists) is taken as JSON."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValidationError(f"expected key=value, got {item!r}", field="--param")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def safe_blob_name(name: str) -> str:
    """A blob name taken from the user: relative, no '..' segments, no backslashes."""
    clean = name.strip()
    if not clean or clean.startswith("/") or "\\" in clean or any(p in ("..", ".") for p in clean.split("/")):
        raise ValidationError(f"not a safe blob name: {name!r}", field="--name")
    if any(ord(c) < 32 for c in clean) or len(clean) > 1024:
        raise ValidationError(f"not a safe blob name: {name!r}", field="--name")
    return clean


def resolve_run(services: Services, run_id: str) -> Run:
    """The run with this id, or the only run whose id starts with it (ids are long)."""
    try:
        return services.store.get(run_id)
    except NotFoundError:
        pass
    if len(run_id) >= 4:
        matches = [r for r in services.store.list_runs(limit=1000) if r.run_id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValidationError(f"{len(matches)} runs start with {run_id!r}; give more characters", field="RUN")
    raise NotFoundError(f"run {run_id!r} not found")


# ---------------------------------------------------------------- rendering


def _dt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> float | None:
    if start is None:
        return None
    if end is None:
        from shared.clock import utcnow

        end = now or utcnow()
    return max(0.0, (end - start).total_seconds())


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s"


def styled(state: str) -> Text:
    return cell(state, STATUS_STYLE.get(state, "white"))


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def step_duration(step: StepRun) -> float | None:
    return duration(step.started_at, step.ended_at) if step.state.value != "pending" else None


def model_of(run: Run) -> dict[str, Any] | None:
    """Model name and version from the register step's outputs (or the gate)."""
    for step in run.steps:
        if step.kind == "register" and step.outputs:
            name = step.outputs.get("model_name") or step.outputs.get("name")
            version = step.outputs.get("version")
            if name or version:
                return {"name": name, "version": version}
    gate = run.gate or {}
    if gate.get("model_name") or gate.get("version"):
        return {"name": gate.get("model_name"), "version": gate.get("version")}
    return None


def gate_lines(gate: dict[str, Any] | None) -> list[Text]:
    if not gate:
        return []
    decision = str(gate.get("decision") or ("promoted" if gate.get("promote") else "rejected"))
    metric = gate.get("metric", "metric")
    cand = gate.get("candidate")
    champ = gate.get("champion")
    champ_v = gate.get("champion_version")
    style = "green" if decision == "promoted" else "yellow"
    lines = [line("gate: ", (decision, style), f" on {metric} ({gate.get('direction', 'maximize')})")]
    lines.append(
        line(
            f"  candidate {metric}={_num(cand)}   champion {metric}={_num(champ)}"
            + (f" (v{champ_v})" if champ_v else " (none yet)" if champ is None else "")
        )
    )
    if gate.get("reason"):
        lines.append(line(f"  reason: {gate['reason']}"))
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def steps_table(run: Run) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("step")
    table.add_column("kind")
    table.add_column("state")
    table.add_column("attempt", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("progress", justify="right")
    table.add_column("remote", overflow="fold")
    for step in run.steps:
        prog = f"{step.progress.get('done', 0)}/{step.progress.get('total', 0)}" if step.progress else "-"
        table.add_row(
            cell(step.name),
            cell(step.kind),
            styled(step.state.value),
            cell(step.attempt),
            cell(fmt_seconds(step_duration(step))),
            cell(prog),
            cell(_short(step.remote_id or "-", 48)),
        )
    return table


def _when(iso: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(iso)) if iso else None
    except ValueError:
        return None


def history_lines(run: Run) -> list[Text]:
    """Finished attempts the steps table no longer shows (retries, and the runs before a rerun).

    ``StepRun.history`` records every finished attempt; the table shows each step's current
    one, so an entry is listed unless it is exactly what the table says (same attempt, same
    state).
    """
    lines: list[Text] = []
    for step in run.steps:
        for entry in step.history:
            outcome = str(entry.get("outcome") or "?")
            if entry.get("attempt") == step.attempt and outcome == step.state.value:
                continue
            started, ended = _when(entry.get("started_at")), _when(entry.get("ended_at"))
            took = fmt_seconds(duration(started, ended)) if started and ended else "-"
            error = entry.get("error")
            lines.append(
                line(
                    f"  {step.name:<12} attempt {entry.get('attempt')}  ",
                    cell(f"{outcome:<9}", STATUS_STYLE.get(outcome, "white")),
                    f"  {_dt(started)}  {took:>7}",
                    f"  {entry.get('remote_id') or '-'}",
                    ("  " + str(error), "red") if error else "",
                )
            )
    if lines:
        reruns = f" ({run.reruns} rerun{'s' if run.reruns != 1 else ''})" if run.reruns else ""
        lines.insert(0, line(("earlier attempts", "bold"), reruns))
    return lines


def print_run(run: Run, out: Console | None = None, *, outputs: bool = True) -> None:
    out = out or console
    total = duration(run.started_at or run.created_at, run.ended_at)
    say(out, ("run", "bold"), f" {run.run_id}  flow ", (run.flow, "bold"), "  ", styled(run.status.value))
    say(out, f"trigger: {run.trigger.kind}  {run.trigger.source}")
    cancelling = run.cancel_requested and not run.status.terminal
    say(
        out,
        f"created {_dt(run.created_at)}  ended {_dt(run.ended_at)}  duration {fmt_seconds(total)}"
        + (f"  reruns {run.reruns}" if run.reruns else ""),
        ("  cancel requested", "yellow") if cancelling else "",
    )
    out.print(steps_table(run))
    for text in history_lines(run):
        say(out, text)
    if outputs:
        for step in run.steps:
            if step.error:
                say(out, f"  {step.name}: ", (step.error, "red"))
            shown = {k: v for k, v in step.outputs.items() if k != "gate"}
            for key, value in shown.items():
                say(out, f"  {step.name}.{key} = {_short(value, 160)}")
    for text in gate_lines(run.gate):
        say(out, text)
    model = model_of(run)
    if model:
        say(out, f"model: {model['name']} version {model['version']}")
    if run.error:
        say(out, ("error:", "red"), f" {run.error}")


def run_json(run: Run) -> dict[str, Any]:
    doc = run.model_dump(mode="json")
    doc["durations"] = {s.name: step_duration(s) for s in run.steps}
    return doc


class _TextField(ProgressColumn):
    """A progress column showing ``task.fields[name]`` (a Text or str) as text, never as markup."""

    def __init__(self, name: str, width: int) -> None:
        super().__init__()
        self.name = name
        self.width = width

    def render(self, task: Task) -> Text:
        value = task.fields.get(self.name, "")
        text = value.copy() if isinstance(value, Text) else cell(value)
        text.truncate(self.width, pad=True)
        return text


class RunFollower:
    """Shows a run's steps until it ends: rich progress bars on a terminal, lines otherwise.

    Call :meth:`update` with each fresh copy of the run (``LocalHost.wait_for_run`` passes
    it as ``on_progress``). Fan-out steps (``step.progress`` done/total) get a bar.
    """

    def __init__(self, out: Console | None = None) -> None:
        self.out = out or console
        self.interactive = self.out.is_terminal and not os.environ.get("CI")
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, tuple[Any, ...]] = {}
        self._last_status: str | None = None

    def __enter__(self) -> RunFollower:
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.fields[step]:<12}", markup=False),
                _TextField("state", width=22),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.out,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, run: Run) -> None:
        self._steps(run)
        if run.status.value != self._last_status:
            self._last_status = run.status.value
            if not self.interactive:
                say(self.out, f"run {run.run_id[:12]} {run.status.value}")

    def _steps(self, run: Run) -> None:
        for step in run.steps:
            prog = step.progress or {}
            done, total = int(prog.get("done", 0)), int(prog.get("total", 0))
            key = (step.state.value, step.attempt, done, total)
            if self._last.get(step.name) == key:
                continue
            self._last[step.name] = key
            if self._progress is not None:
                self._bar(step, done, total)
            elif step.state.value != "pending":
                extra = f" {done}/{total}" if total else ""
                attempt = f" (attempt {step.attempt})" if step.attempt > 1 else ""
                say(self.out, f"  {step.name:<12} {step.state.value}{extra}{attempt}")

    def _bar(self, step: StepRun, done: int, total: int) -> None:
        state = line(styled(step.state.value), f" #{step.attempt}" if step.attempt > 1 else "")
        if step.name not in self._tasks:
            self._tasks[step.name] = self._progress.add_task(
                "", step=step.name, state=state, total=total or 1, completed=0, start=step.state.value != "pending"
            )
        task = self._tasks[step.name]
        if step.state.value != "pending":
            self._progress.start_task(task)
        if total:
            completed = done
            bar_total: float = total
        else:
            bar_total = 1
            completed = 1 if step.state.value == "succeeded" else 0
        self._progress.update(task, state=state, total=bar_total, completed=completed)
        if step.state.terminal:
            self._progress.stop_task(task)


# ---------------------------------------------------------------- commands


@app.command()
@friendly
def up(
    workers: int = typer.Option(2, "--workers", min=1, max=32, help="queue consumer threads"),
) -> None:
    """Run the local Functions host (Azurite, HTTP routes, blob events, schedules, workers) until Ctrl-C."""
    from shared.host.runtime import LocalHost

    settings = load_settings()
    own_process_group()
    host = LocalHost(settings, workers=workers)
    stop = threading.Event()
    console_log = log_to_console()

    def _term(signum: int, frame: Any) -> None:
        stop.set()

    # SIGINT too: a shell that starts `conveyor up &` hands it SIGINT ignored, and Ctrl-C must stop it
    previous = {sig: signal.signal(sig, _term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        host.start()
        print_up_banner(host)
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say(err_console, "stopping…")
        host.stop()
        logging.getLogger("conveyor").removeHandler(console_log)


def own_process_group() -> None:
    """Lead a process group of our own, so that killing the host's group (``kill -KILL -<pid>``,
    as the chaos test does) stops the host and nothing else. Not when a terminal's job control
    already gave this job its group in the foreground: leaving it would keep Ctrl-C from
    reaching the host. Azurite, task processes, their helpers and the scoring server run in
    sessions of their own: they outlive the host by design (the next host finds them)."""
    if os.getpgrp() == os.getpid():
        return
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


def print_up_banner(host: Any) -> None:
    s = host.settings
    url = host.url
    containers = host.watcher.containers if host.watcher is not None else []
    flows = sorted(host.flows.flows) if host.flows is not None else []
    say(console, ("conveyor host running", "bold green"), f" at {url}")
    say(console, f"  {'console':<18} {console_url(url)}")
    lines = [
        ("status", f"GET  {url}/admin/host/status"),
        ("start a run", f"POST {url}/api/flows/{{flow}}/runs"),
        ("runs", f"GET  {url}/api/runs"),
        ("run", f"GET  {url}/api/runs/{{run_id}}"),
        ("DevOps hook", f"POST {url}/api/hooks/azure-devops"),
        ("Event Grid", f"POST {url}/runtime/webhooks/EventGrid?functionName=blob_created"),
        ("Event Grid (HTTP)", f"POST {url}/api/events/blob"),
        ("blob storage", f"http://{s.azurite_host}:{s.azurite_blob_port}/devstoreaccount1"),
    ]
    lines += [
        ("flows", ", ".join(flows) or "-"),
        ("watching", ", ".join(containers) or "(no blob triggers)"),
        ("data home", str(s.home)),
    ]
    for label, value in lines:
        say(console, f"  {label:<18} {value}")
    say(console, "Ctrl-C to stop.")


@app.command()
@friendly
def validate(
    file: Path | None = typer.Option(
        None, "--file", "-f", help="flows file (default: CONVEYOR_FLOWS_FILE or ./flows.yaml)"
    ),
) -> None:
    """Check flows.yaml (and the project files it names); print every issue as FILE:LINE: path: message."""
    from shared.flows.loader import ProjectFiles, load_flows

    settings = load_settings()
    path = file or settings.flows_file
    project = ProjectFiles(settings.root, python_files=settings.adapter("databricks") == "local")
    flows = load_flows(path, project=project)
    n = len(flows.flows)
    say(console, f"{Path(path).name} is valid: {n} flow{'s' if n != 1 else ''}")


@app.command()
@friendly
def schema(
    out: Path | None = typer.Option(None, "--out", "-o", help="write the JSON schema here instead of stdout"),
) -> None:
    """The JSON schema of flows.yaml (for editor validation)."""
    from shared.flows.loader import json_schema

    doc = json_schema()
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2, sort_keys=False)
    if out is None:
        sys.stdout.write(text.rstrip("\n") + "\n")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    say(err_console, f"wrote {out}")


@app.command()
@friendly
def drop(
    file: Path = typer.Argument(..., help="local file to upload"),
    container: str = typer.Option("landing", "--container", "-c"),
    name: str | None = typer.Option(None, "--name", "-n", help="blob name (default: the file name)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="follow the run(s) this file starts until they end"),
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to follow before giving up"),
) -> None:
    """Upload a file into a watched container (the host's watcher emits BlobCreated for it)."""
    if not file.is_file():
        fail(f"no such file: {file}", 2)
    blob_name = safe_blob_name(name or file.name)
    settings = load_settings()
    watched = _watching(settings, container)
    with storage(settings) as services:
        info = services.blobs.upload_file(container, blob_name, file)
    say(console, f"uploaded {info.url}  etag {info.etag}  {info.size} bytes")
    if watched is not None and not watched:
        say(err_console, ("warning:", "yellow"), f" no flow watches container {container!r}; nothing will start")
    elif watched:
        host_up = host_running(settings)
        if host_up:
            say(console, f"flows watching it: {', '.join(watched)} (the running host will start them)")
        elif not follow:
            say(console, f"flows watching it: {', '.join(watched)}; start `conveyor up` to process it")
        if follow:
            _follow_drop(settings, info, watched, timeout, host_up=host_up)


def _follow_drop(settings: Settings, info: Any, flows: list[str], timeout: float, *, host_up: bool) -> None:
    """Follow the run each watching flow starts for this blob version (url and eTag)."""
    etag = str(info.etag).strip('"')
    failed = False
    for flow in flows:

        def started_by_drop(run: Run, flow: str = flow) -> bool:
            blob = run.trigger.blob or {}
            return run.flow == flow and blob.get("url") == info.url and str(blob.get("etag") or "").strip('"') == etag

        run = _follow(settings, started_by_drop, timeout, host_up=host_up)
        print_run(run)
        failed = failed or run.status.value != "succeeded"
    if failed:
        raise typer.Exit(1)


def _watching(settings: Settings, container: str) -> list[str] | None:
    """Names of flows with a blob trigger on ``container``; None when flows.yaml is unusable."""
    from shared.flows.loader import FlowsFileError, load_flows

    try:
        flows = load_flows(settings.flows_file)
    except FlowsFileError as exc:
        say(err_console, ("warning:", "yellow"), f" flows.yaml is invalid ({len(getattr(exc, 'issues', []))} issues)")
        return None
    return sorted(
        name
        for name, flow in flows.flows.items()
        if any(getattr(t, "kind", "") == "blob" and getattr(t, "container", None) == container for t in flow.triggers)
    )


@app.command()
@friendly
def trigger(
    flow: str = typer.Argument(..., help="flow name"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="k=v (repeatable; JSON values allowed)"),
    key: str | None = typer.Option(None, "--key", "-k", help="idempotency key: the same key starts one run"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show progress until the run ends"),
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to follow before giving up"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a manual run (through the running host when there is one)."""
    params = parse_params(param)
    settings = load_settings()
    if host_running(settings):
        body: dict[str, Any] = {"params": params}
        if key:
            body["idempotency_key"] = key
        status, doc = http_json("POST", f"{host_url(settings)}/api/flows/{flow}/runs", body)
        if status >= 400:
            err = (doc or {}).get("error", {}) if isinstance(doc, dict) else {}
            msg = err.get("message") or f"HTTP {status}"
            if err.get("field"):
                msg = f"{err['field']}: {msg}"
            fail(msg, 2 if status in (400, 404, 409, 422) else 1)
        result = doc or {}
        via = "host"
    else:
        with storage(settings) as services:
            from shared.ingest.service import IngestService

            res = IngestService.from_services(services).start_manual(flow, params, idempotency_key=key)
        result = {
            "run_id": res.run_id,
            "flow": res.flow,
            "status": getattr(res.status, "value", res.status),
            "created": bool(res.created),
            "reason": getattr(res, "reason", None),
        }
        via = "storage"
    run_id = str(result.get("run_id") or "")
    if as_json and not follow:
        console.print_json(data=result)
        return
    what = "started" if result.get("created") else "already exists"
    say(console, f"run {run_id} {what} ({result.get('status')}) for flow {flow}")
    if result.get("reason"):
        say(console, f"  {result['reason']}")
    if not run_id:
        raise typer.Exit(1)
    if not follow:
        if via == "storage":
            say(console, "no host is running: the run starts when `conveyor up` consumes the queue")
        return
    run = _follow(settings, run_id, timeout, host_up=(via == "host"))
    print_run(run)
    if as_json:
        console.print_json(data=run_json(run))
    if run.status.value != "succeeded":
        raise typer.Exit(1)


def _follow(
    settings: Settings,
    run_id: str | Callable[[Run], bool],
    timeout: float,
    *,
    host_up: bool,
    accept: Callable[[Run], bool] | None = None,
) -> Run:
    """Follow a run (its id, or the newest run a predicate picks) to its end (one ``accept``
    agrees with); without a running host, run one in this process meanwhile."""
    from shared.cli_graph import fanout_progress
    from shared.host.runtime import LocalHost, wait_for_run

    with contextlib.ExitStack() as stack:
        if host_up:
            services = stack.enter_context(storage(settings))
        else:
            say(console, ("no host is running: starting one in this process to follow the run", "dim"))
            say(console, ("(it stops when the run ends; `conveyor up` keeps one running)", "dim"))
            host = stack.enter_context(LocalHost(settings))
            assert host.services is not None
            services = host.services
        store = services.store
        enrich = fanout_progress(services.instances)
        with RunFollower() as follower:
            return wait_for_run(
                store, run_id, timeout=timeout, on_progress=lambda r: follower.update(enrich(r)), accept=accept
            )
    raise AssertionError("unreachable")


@app.command()
@friendly
def runs(
    flow: str | None = typer.Option(None, "--flow"),
    status: list[str] | None = typer.Option(
        None, "--status", help="pending, queued, running, succeeded, failed, cancelled"
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List runs, newest first."""
    from shared.engine.model import RunStatus

    statuses = None
    if status:
        statuses = []
        for raw in status:
            for part in raw.split(","):
                try:
                    statuses.append(RunStatus(part.strip().lower()))
                except ValueError:
                    allowed = ", ".join(s.value for s in RunStatus)
                    raise ValidationError(f"unknown status {part!r}; one of {allowed}", field="--status") from None
    with storage() as services:
        found = services.store.list_runs(flow=flow, statuses=statuses, limit=limit)
    if as_json:
        from shared.api.handlers import run_summary

        sys.stdout.write(json.dumps([run_summary(r) for r in found], default=str, indent=2) + "\n")
        return
    if not found:
        say(console, "no runs")
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("run", "flow", "status", "trigger", "created", "duration", "step"):
        table.add_column(col)
    for r in found:
        cur = r.current_step()
        table.add_row(
            cell(r.run_id[:12]),
            cell(r.flow),
            styled(r.status.value),
            cell(r.trigger.kind),
            cell(_dt(r.created_at)),
            cell(fmt_seconds(duration(r.started_at or r.created_at, r.ended_at))),
            cell("-" if r.status.terminal or cur is None else f"{cur.name} ({cur.state.value})"),
        )
    console.print(table)


@app.command()
@friendly
def show(
    run_id: str = typer.Argument(..., metavar="RUN", help="run id (or a unique prefix)"),
    as_json: bool = typer.Option(False, "--json"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show progress until the run ends, then the run"),
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to follow before giving up"),
) -> None:
    """One run: its graph of steps, states, attempts (earlier ones too), durations, outputs, progress, gate."""
    from shared.cli_graph import print_graph
    from shared.runview import graph_view

    settings = load_settings()

    def graph_inputs(services: Services, run: Run) -> tuple[Any, dict[str, Any]]:
        fanouts = services.instances.fanouts(run.run_id) if any(s.fanout for s in run.steps) else {}
        return services.flows.flows.get(run.flow), fanouts

    with storage(settings) as services:
        run = resolve_run(services, run_id)
        following = follow and not run.status.terminal
        if not following:
            flow, fanouts = graph_inputs(services, run)
    if following:
        run = _follow(settings, run.run_id, timeout, host_up=host_running(settings))
        with storage(settings) as services:
            flow, fanouts = graph_inputs(services, run)
    if as_json:
        doc = run_json(run)
        doc["graph"] = graph_view(run, flow, fanouts)
        sys.stdout.write(json.dumps(doc, default=str, indent=2) + "\n")
    else:
        print_run(run)
        print_graph(run, flow, fanouts, console)
    if follow and run.status.value != "succeeded":
        raise typer.Exit(1)


TRACE_HIDDEN = frozenset({"run_id", "flow", "traceparent"})


def trace_tree(records: list[dict[str, Any]], title: str) -> Tree:
    """Spans nested by parent span id; events under the span that emitted them."""
    spans = [r for r in records if r.get("type") == "span"]
    ids = {r.get("span_id") for r in spans if r.get("span_id")}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for rec in records:
        parent = rec.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(rec)
    for items in children.values():
        items.sort(key=lambda r: str(r.get("ts") or ""))
    root = Tree(cell(title))

    def label(rec: dict[str, Any]) -> Text:
        attrs = {k: v for k, v in (rec.get("attributes") or {}).items() if k not in TRACE_HIDDEN}
        shown = ", ".join(f"{k}={_short(v, 48)}" for k, v in list(attrs.items())[:6])
        extra = ("  " + shown, "dim") if shown else ""
        if rec.get("type") == "span":
            ms = rec.get("duration_ms")
            dur = f"{ms / 1000:.2f}s" if isinstance(ms, int | float) and ms >= 1000 else f"{ms or 0:.1f}ms"
            bad = (" ERROR", "red") if rec.get("status") not in (None, "ok") else ""
            return line((str(rec.get("name")), "bold"), f" {dur}", bad, extra)
        return line((f"• {rec.get('name')}", "cyan"), extra)

    def add(node: Tree, parent: str | None, depth: int) -> None:
        for rec in children.get(parent, []):
            sub = node.add(label(rec))
            if rec.get("type") == "span" and rec.get("span_id") and depth < 50:
                add(sub, rec["span_id"], depth + 1)

    add(root, None, 0)
    return root


@app.command()
@friendly
def trace(run_id: str = typer.Argument(..., metavar="RUN")) -> None:
    """The run's spans and events (local telemetry JSONL) as a tree with durations."""
    from shared.telemetry.local import read_trace

    settings = load_settings()
    records = read_trace(settings.home, run_id)
    if not records and len(run_id) < 32:
        tele = settings.home / "telemetry"
        matches = sorted(p.stem for p in tele.glob(f"{run_id}*.jsonl")) if tele.is_dir() else []
        if len(matches) == 1:
            run_id = matches[0]
            records = read_trace(settings.home, run_id)
    if not records:
        fail(f"no telemetry for run {run_id!r} under {settings.home / 'telemetry'}", 2)
    trace_ids = sorted({str(r.get("trace_id")) for r in records if r.get("trace_id")})
    title = f"run {run_id}" + (f"  trace {trace_ids[0]}" if len(trace_ids) == 1 else "")
    from shared.cli_graph import instance_trace_tree

    console.print(instance_trace_tree(records, title))


@app.command()
@friendly
def logs(
    run_id: str = typer.Argument(..., metavar="RUN", help="run id (or a unique prefix)"),
    step: str | None = typer.Argument(None, metavar="[STEP]", help="one step (default: every launched step)"),
    attempt: int | None = typer.Option(None, "--attempt", min=1, help="an earlier attempt of STEP (see `show`)"),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="print new lines as they are written, until the run ends"
    ),
    timeout: float = typer.Option(3600.0, "--timeout", help="seconds to follow before giving up"),
) -> None:
    """stdout/stderr of a run's steps: the local backends' files, what the Azure services keep."""
    from shared.runlogs import follow_logs, print_logs

    settings = load_settings()
    with storage(settings) as services:
        run = resolve_run(services, run_id)
        if not follow:
            print_logs(console, services, run, step, attempt)
            return
        if not run.status.terminal and not host_running(settings):
            say(err_console, ("no host is running: nothing moves until `conveyor up` runs", "yellow"))
        follow_logs(console, services, run.run_id, step, attempt, timeout=timeout)


@app.command()
@friendly
def cancel(run_id: str = typer.Argument(..., metavar="RUN")) -> None:
    """Ask a run to stop (its running step is cancelled; later steps never start)."""
    from shared.engine.control import request_cancel

    with storage() as services:
        run = resolve_run(services, run_id)
        run = request_cancel(services.store, services.queue, run.run_id)
    say(console, f"cancel requested for run {run.run_id} ({run.status.value})")


@app.command()
@friendly
def rerun(
    run_id: str = typer.Argument(..., metavar="RUN"),
    from_step: str | None = typer.Option(None, "--from", help="restart at this step (default: the first failed)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="show progress until the rerun ends, then the run"),
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to follow before giving up"),
) -> None:
    """Run a finished run again from a step, keeping earlier steps' outputs."""
    from shared.engine.control import request_rerun

    settings = load_settings()
    with storage(settings) as services:
        run = resolve_run(services, run_id)
        run = request_rerun(services.store, services.queue, services.flows, run.run_id, from_step)
    where = f"from {from_step}" if from_step else ""
    say(console, f"rerun requested for run {run.run_id} {where}".rstrip())
    host_up = host_running(settings)
    if not follow:
        if not host_up:
            say(console, "no host is running: the rerun starts when `conveyor up` consumes the queue")
        return
    before = run.reruns
    run = _follow(settings, run.run_id, timeout, host_up=host_up, accept=lambda r: r.reruns > before)
    print_run(run)
    if run.status.value != "succeeded":
        raise typer.Exit(1)


def console_url(base_url: str, run_id: str | None = None) -> str:
    """The web console's page for the host at ``base_url``: the runs, or one run."""
    from urllib.parse import quote

    return f"{base_url}/" if run_id is None else f"{base_url}/runs/{quote(run_id, safe='')}"


@app.command("open")
@friendly
def open_page(
    run_id: str | None = typer.Argument(None, metavar="[RUN]", help="run id (or a unique prefix); none: the runs"),
    print_only: bool = typer.Option(False, "--print", help="only print the URL"),
) -> None:
    """Open the web console (or one run's page) in a browser; print the URL when there is no browser."""
    import webbrowser

    settings = load_settings()
    target = None
    if run_id is not None:
        with storage(settings) as services:
            target = resolve_run(services, run_id).run_id
    url = console_url(host_url(settings), target)
    if not host_running(settings):
        say(err_console, ("no host is running here: start `conveyor up` to serve the console", "yellow"))
    opened = False
    if not print_only:
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
    console.print(url if not opened else f"opened {url}", highlight=False, soft_wrap=True)


@app.command()
@friendly
def demo(
    timeout: float = typer.Option(600.0, "--timeout", help="seconds to wait for the run"),
    keep: bool = typer.Option(False, "--keep", help="keep the previous demo data instead of starting fresh"),
    many: bool = typer.Option(
        False, "--many", help="the many-models flow: one model per store, all behind one routed endpoint"
    ),
    stores: int | None = typer.Option(
        None, "--stores", min=1, max=200, help="with --many: stores in the sample file (default 24)"
    ),
    serve: bool | None = typer.Option(
        None, "--serve/--no-serve", help="keep the console up after the run until Enter (default: a terminal, not CI)"
    ),
) -> None:
    """Drop sample data, follow one run to a deployed model, and ask it for a prediction."""
    from shared.demo import demo_settings, run_demo, wait_for_enter

    if serve is None:
        serve = sys.stdin.isatty() and not os.environ.get("CI")
    linger = wait_for_enter(console) if serve else None
    settings = demo_settings(load_settings(), "demo-many" if many else "demo")
    result = run_demo(settings, fresh=not keep, timeout=timeout, out=console, linger=linger, many=many, stores=stores)
    raise typer.Exit(0 if result.ok else 1)


# dlq list|replay, backfill, purge (shared/cli_ops.py)
register_ops(app, friendly, storage, console, err_console)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``conveyor = shared.cli:main``)."""

    # MLflow logs its database migrations at INFO on first use: noise in a terminal
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        app(args=argv, prog_name="conveyor", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
