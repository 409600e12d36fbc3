"""Event Grid for the local host: watch containers, emit real BlobCreated events over HTTP.

Azurite has no Event Grid, so the watcher plays its part: every
``settings.watch_interval_seconds`` it lists each container a blob trigger in flows.yaml
names; a new blob, or one whose eTag changed, becomes a ``Microsoft.Storage.BlobCreated``
event in the Event Grid schema, POSTed to the host's
``/runtime/webhooks/EventGrid?functionName=blob_created`` with ``aeg-event-type:
Notification`` -- the same delivery Event Grid makes in Azure, retried with backoff on
failure. What was delivered is remembered in ``<home>/watcher.json`` so a restart does not
emit it again (and if it did, the run id -- flow, URL, eTag -- would dedupe).

Listings are taken as they are: a blob whose name Conveyor refuses (a newline, ``..``...) is
delivered like any other and refused by the one ingest parser (2xx, listed as ignored, a
warning and a ``trigger.refused`` telemetry event), so it is skipped once per version and
never stops the blobs after it. A container that cannot be listed is a warning (once per
distinct error), not a silent debug line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConveyorError, TransientError

if TYPE_CHECKING:
    from shared.blobs.base import BlobInfo, BlobStore
    from shared.flows.model import FlowsFile
    from shared.settings import Settings

log = logging.getLogger("conveyor.watcher")

STATE_FILE = "watcher.json"
FUNCTION_NAME = "blob_created"


def watched_containers(flows: FlowsFile) -> list[str]:
    """Every container a blob trigger names, sorted, once each."""
    names: set[str] = set()
    for flow in flows.flows.values():
        for trig in flow.triggers:
            if getattr(trig, "kind", None) == "blob":
                names.add(trig.container)  # type: ignore[union-attr]
    return sorted(names)


def account_name(settings: Settings) -> str:
    """The storage account name (AccountName= in the connection string; Azurite's dev account)."""
    for part in settings.connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "accountname" and value.strip():
            return value.strip()
    from shared.settings import AZURITE_ACCOUNT

    return AZURITE_ACCOUNT


def post_delivery(
    url: str, events: list[dict[str, Any]], *, attempts: int = 5, backoff: float = 0.25, timeout: float = 30.0
) -> int:
    """POST one Event Grid delivery; retry 5xx/connection errors with exponential backoff.

    Returns the HTTP status of the accepted delivery. A 4xx (other than 408/429) is not retried:
    Event Grid dead-letters those, and so do we (raise). Raises TransientError when out of tries.
    """
    body = json.dumps(events).encode("utf-8")
    delay = backoff
    last = ""
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(  # noqa: S310 - loopback URL we built
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "aeg-event-type": "Notification",
                "aeg-delivery-count": str(attempt - 1),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            last = f"HTTP {exc.code}: {detail}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                from shared.errors import BadRequestError

                raise BadRequestError(f"delivery rejected: {last}", service="eventgrid", status=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise TransientError(f"delivery to {url} failed after {attempts} attempts: {last}", service="eventgrid")


class BlobWatcher:
    """Polls watched containers and delivers BlobCreated events for new or changed blobs."""

    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        endpoint: str,
        *,
        containers: Iterable[str] | None = None,
        flows: FlowsFile | None = None,
        interval: float | None = None,
        deliver: Callable[[str, list[dict[str, Any]]], Any] | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.endpoint = endpoint.rstrip("/")
        if containers is None:
            if flows is None:
                raise ValueError("BlobWatcher needs containers or flows")
            containers = watched_containers(flows)
        self.containers = list(containers)
        self.interval = float(settings.watch_interval_seconds if interval is None else interval)
        self.deliver = deliver or post_delivery
        self.state_path = state_path or (Path(settings.home) / STATE_FILE)
        self.account = account_name(settings)
        self.seen: dict[str, str] = self._load()
        self.emitted = 0
        self._list_errors: dict[str, str] = {}  # container -> the listing error last warned about
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def delivery_url(self) -> str:
        return f"{self.endpoint}/runtime/webhooks/EventGrid?functionName={FUNCTION_NAME}"

    # ------------------------------------------------------------ memory
    def _load(self) -> dict[str, str]:
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("watcher: ignoring unreadable %s (%s)", self.state_path, exc)
            return {}
        seen = doc.get("seen") if isinstance(doc, dict) else None
        return {str(k): str(v) for k, v in seen.items()} if isinstance(seen, dict) else {}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"seen": self.seen}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)

    @staticmethod
    def _key(info: BlobInfo) -> str:
        return f"{info.container}/{info.name}"

    # ------------------------------------------------------------ one pass
    def scan_once(self) -> list[dict[str, Any]]:
        """List every watched container once; deliver an event per new/changed blob.

        Returns the events delivered. A failed delivery is not remembered, so the next pass
        tries it again.
        """
        from shared.ingest.eventgrid import blob_created_event

        delivered: list[dict[str, Any]] = []
        for container in self.containers:
            try:
                listing = self.blobs.list_blobs(container)
            except ConveyorError as exc:
                if self._list_errors.get(container) != str(exc):
                    log.warning(
                        "watcher: cannot list container %s (no runs start from it meanwhile): %s", container, exc
                    )
                    self._list_errors[container] = str(exc)
                continue
            if self._list_errors.pop(container, None) is not None:
                log.info("watcher: container %s lists again", container)
            for info in listing:
                key = self._key(info)
                if self.seen.get(key) == info.etag:
                    continue
                event = blob_created_event(info, self.account)
                try:
                    self.deliver(self.delivery_url, [event])
                except ConveyorError as exc:
                    log.warning("watcher: %s not delivered: %s", key, exc)
                    if exc.retryable:
                        continue
                    # rejected for good (4xx): remember it, as Event Grid would dead-letter it
                self.seen[key] = info.etag
                self._save()
                delivered.append(event)
                self.emitted += 1
        return delivered

    # ------------------------------------------------------------ thread
    def start(self) -> BlobWatcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="conveyor-watcher", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # keep watching whatever one pass hit
                log.exception("watcher: pass failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
