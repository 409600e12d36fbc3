"""``LocalHost``: the Functions host of ``conveyor up``, in one process.

Start order: validate flows.yaml (a host never starts on an invalid file), Azurite (unless
one already listens on the configured ports), the services, the HTTP server (the same
routes and handlers as the Functions app), the blob watcher (Event Grid), the scheduler
(timer triggers and the sweeper) and the queue workers (the orchestrator). ``stop`` undoes
it in reverse order and stops only what this host started (Azurite only when it started
it; the local scoring server that deploy steps started under its home).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shared.errors import TransientError

if TYPE_CHECKING:
    from shared.engine.model import Run
    from shared.flows.model import FlowsFile
    from shared.host.asgi import HostServer
    from shared.host.scheduler import Scheduler
    from shared.host.watcher import BlobWatcher
    from shared.host.worker import QueueWorkers
    from shared.local.azurite import Azurite
    from shared.settings import Settings
    from shared.wiring import Services

log = logging.getLogger("conveyor.host")

RunMatch = str | Callable[["Run"], bool]


class RunWaitTimeout(TransientError):
    """A run did not reach a terminal state (or did not appear) in time."""


class LocalHost:
    def __init__(
        self,
        settings: Settings,
        services: Services | None = None,
        *,
        workers: int = 2,
        watch: bool = True,
        schedule: bool = True,
        start_azurite: bool = True,
        scheduler_interval: float = 2.0,
        stop_scoring: bool = True,
    ) -> None:
        self.settings = settings
        self.services = services
        self.workers_count = workers
        self.watch = watch
        self.schedule = schedule
        self.start_azurite = start_azurite
        self.scheduler_interval = scheduler_interval
        self.stop_scoring = stop_scoring
        self.flows: FlowsFile | None = None
        self.azurite: Azurite | None = None
        self.server: HostServer | None = None
        self.watcher: BlobWatcher | None = None
        self.scheduler: Scheduler | None = None
        self.workers: QueueWorkers | None = None
        self._previous_services: Services | None = None
        self._started = False

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        port = self.server.port if self.server is not None else self.settings.host_port
        return f"http://127.0.0.1:{port}"

    def start(self) -> LocalHost:
        if self._started:
            return self
        from shared.flows.loader import ProjectFiles, load_flows

        # 1. the file first: FlowsFileError (with path and line of every issue) stops everything
        s = self.settings
        self.flows = load_flows(s.flows_file, project=ProjectFiles(s.root, s.adapter("databricks") == "local"))
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def _start_parts(self) -> None:
        from shared import wiring
        from shared.host.asgi import HostServer
        from shared.host.scheduler import Scheduler
        from shared.host.server import HostApp
        from shared.host.watcher import BlobWatcher
        from shared.host.worker import QueueWorkers

        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        if self.start_azurite and s.adapter("store") == "local":
            from shared.local.azurite import ensure_azurite

            self.azurite = ensure_azurite(s)
        if self.services is None:
            self.services = wiring.Services(s, flows=self.flows)
        else:
            self.services.__dict__.setdefault("flows", self.flows)
        services = self.services
        # the Functions blueprints in this process (and get_services()) see the same ports
        self._previous_services = wiring._services
        wiring.set_services(services)

        self.server = HostServer(HostApp(services), host="127.0.0.1", port=s.host_port).start()
        if self.workers_count > 0:  # 0: nothing consumes the queue (tests that inspect it)
            self.workers = QueueWorkers.from_services(services, count=self.workers_count).start()
        if self.schedule:
            self.scheduler = Scheduler(services, interval=self.scheduler_interval).start()
        if self.watch:
            assert self.flows is not None
            self.watcher = BlobWatcher(s, services.blobs, self.url, flows=self.flows).start()
        log.info("conveyor host running at %s", self.url)

    def stop(self) -> None:
        from shared import wiring

        for part in (self.watcher, self.scheduler, self.server, self.workers):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("host: stopping %s failed", type(part).__name__)
        self.watcher = self.scheduler = self.server = self.workers = None
        if self.services is not None:
            try:
                self.services.telemetry.flush()
            except Exception:
                log.debug("host: telemetry flush failed", exc_info=True)
            events = self.services.__dict__.get("events")
            if events is not None:  # undelivered lifecycle events stay in the outbox for the next start
                events.close()
        if self._started or self._previous_services is not None:
            wiring.set_services(self._previous_services)
            self._previous_services = None
        if self.stop_scoring and self._started and self.settings.adapter("deployer") == "local":
            # the local scoring server a deploy step started is part of this host's stack
            try:
                from shared.deploy.local_endpoint import stop_server

                stop_server(self.settings.home)
            except Exception:
                log.exception("host: stopping the scoring server failed")
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        self._started = False

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ waiting
    def wait_for_run(
        self,
        match: RunMatch,
        timeout: float = 300.0,
        on_progress: Callable[[Run], Any] | None = None,
        poll: float = 0.5,
    ) -> Run:
        """Wait until a run ends and return it.

        ``match`` is a run id, or a predicate over runs (the newest matching run is
        followed, e.g. ``lambda r: r.flow == "retrain"``). ``on_progress(run)`` is called on
        every poll. Raises RunWaitTimeout after ``timeout`` seconds.
        """
        if self.services is None:
            raise RuntimeError("host not started")
        return wait_for_run(self.services.store, match, timeout=timeout, on_progress=on_progress, poll=poll)


def wait_for_run(
    store: Any,
    match: RunMatch,
    *,
    timeout: float = 300.0,
    on_progress: Callable[[Run], Any] | None = None,
    poll: float = 0.5,
    accept: Callable[[Run], bool] | None = None,
) -> Run:
    """Poll ``store`` until the run ``match`` names reaches a terminal status (see LocalHost).

    ``accept``: a terminal run counts only when ``accept(run)`` holds (e.g. a rerun that was
    asked for has begun: ``lambda r: r.reruns > before``)."""
    from shared.errors import NotFoundError

    deadline = time.monotonic() + timeout
    run_id = match if isinstance(match, str) else None
    run: Run | None = None
    while True:
        if run_id is None:
            assert callable(match)
            found = [r for r in store.list_runs(limit=1000) if match(r)]
            if found:
                run_id = found[0].run_id
                run = found[0]
        else:
            try:
                run = store.get(run_id)
            except NotFoundError:
                run = None
        if run is not None:
            if on_progress is not None:
                on_progress(run)
            if run.status.terminal and (accept is None or accept(run)):
                return run
        if time.monotonic() >= deadline:
            what = f"run {run_id}" if run_id else "a matching run"
            state = f" (last status {run.status.value})" if run is not None else " (never appeared)"
            raise RunWaitTimeout(f"{what} did not finish within {timeout:.0f}s{state}", service="host")
        time.sleep(poll)
