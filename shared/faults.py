"""Fault injection at the adapters' edges: ``CONVEYOR_FAULT_RATE`` of the calls fail on purpose.

With ``CONVEYOR_FAULT_RATE=0.2`` one call in five to storage or a backend fails the way a
busy cloud fails, in equal parts:

* ``throttled`` -- HTTP 429 (``ServerBusy``), nothing done (Blob and Queue Storage throttle with
  503 ``ServerBusy``, so there it is a 503, as those services answer);
* ``unavailable`` -- HTTP 503 (``ServerBusy``), nothing done;
* ``timeout`` -- no answer, the request never reached the service;
* ``timeout-after`` -- no answer, but the service did apply the request (the hard case: a
  retry finds its own create, save or send already there).

Where the faults enter:

* **Storage** (Table, Queue and Blob Storage, Azurite locally -- the same adapter code in both
  modes): in the HTTP session under the SDK client (:class:`FaultyHTTPAdapter`, mounted on the
  ``requests`` session of the client's transport), so the SDK's own retry policy meets each
  fault as it would meet a real one, and the adapter's error mapping (shared.azure_errors) sees
  what is left after its retries (shared.transport: 3 retries). azure-core retries no POST whose
  answer timed out (a Table create or transaction): the caller's retry then finds its own row
  (``TableRunStore`` tells its own create or save from someone else's).
* **Backends** (every step kind, local or Azure: batch, databricks, azureml, register, deploy):
  at the JobBackend port (:class:`FaultyBackend`), as the adapter's own error mapping would raise
  them: ThrottledError (429), TransientError (503, timeouts). A ``timeout-after`` launch has
  launched its job, a ``timeout-after`` poll has polled it.

Not covered: Service Bus (AMQP; its client has no HTTP pipeline to fault) and the model
registry/deployer calls made inside the register and deploy steps (the step's own launch and
poll are). ``CONVEYOR_FAULT_SEED`` makes a run of faults repeatable. Every injected fault is
logged (``conveyor.faults``, INFO) and counted (:attr:`FaultInjector.counts`).
"""

from __future__ import annotations

import io
import json
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.errors import ThrottledError, TransientError, ValidationError

if TYPE_CHECKING:
    import requests

    from shared.settings import Settings

log = logging.getLogger("conveyor.faults")

KINDS = ("throttled", "unavailable", "timeout", "timeout-after")


_INJECTORS: dict[tuple[float, int | None], FaultInjector] = {}
_INJECTORS_LOCK = threading.Lock()


@dataclass
class FaultInjector:
    """Draws a fault (or none) for each call, at ``rate``, reproducibly with ``seed``."""

    rate: float
    seed: int | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValidationError(f"must be at least 0 and below 1, got {self.rate!r}", field="CONVEYOR_FAULT_RATE")
        self._random = random.Random(self.seed)  # noqa: S311 - test faults, not secrets: a seed repeats them
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FaultInjector | None:
        """The process's injector for the settings' rate and seed (one for every adapter, so a
        seed gives one sequence of faults); None when the rate is 0 (the default)."""
        if settings.fault_rate == 0:
            return None
        key = (settings.fault_rate, settings.fault_seed)
        with _INJECTORS_LOCK:
            if key not in _INJECTORS:
                _INJECTORS[key] = cls(settings.fault_rate, settings.fault_seed)
            return _INJECTORS[key]

    def draw(self, where: str) -> str | None:
        """The fault for one call at ``where`` (e.g. ``table GET``, ``batch.launch``), or None."""
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(KINDS)
            self.counts[kind] += 1
        log.info("injected fault %s at %s", kind, where)
        return kind


# ---------------------------------------------------------------- storage: under the SDK's retries


def _faulty_adapter_class() -> type[Any]:
    from requests.adapters import HTTPAdapter

    class FaultyHTTPAdapter(HTTPAdapter):
        """A ``requests`` adapter that fails ``injector.rate`` of the requests before (or, for
        ``timeout-after``, after) sending them for real."""

        def __init__(self, injector: FaultInjector, service: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.injector = injector
            self.service = service

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            from requests.exceptions import ConnectTimeout, ReadTimeout

            kind = self.injector.draw(f"{self.service} {request.method}")
            if kind == "throttled" and self.service == "table":
                return self._answer(request, 429, "Too Many Requests")
            if kind in ("throttled", "unavailable"):  # Blob and Queue Storage throttle with 503
                return self._answer(request, 503, "Server Busy")
            if kind == "timeout":
                raise ConnectTimeout("injected fault: the request timed out before it reached the service")
            response = super().send(request, *args, **kwargs)
            if kind == "timeout-after":
                response.close()
                raise ReadTimeout("injected fault: the service applied the request, its answer timed out")
            return response

        def _answer(self, request: requests.PreparedRequest, status: int, reason: str) -> requests.Response:
            """The error answer the service gives: JSON for Table Storage, XML for the others."""
            from urllib3 import HTTPResponse

            text = f"injected fault: {status} {reason}"
            if self.service == "table":
                body = json.dumps({"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": text}}})
                ctype = "application/json;odata=minimalmetadata"
            else:
                xml = '<?xml version="1.0" encoding="utf-8"?>'
                body = f"{xml}<Error><Code>ServerBusy</Code><Message>{text}</Message></Error>"
                ctype = "application/xml"
            data = body.encode()
            raw = HTTPResponse(
                body=io.BytesIO(data),
                headers={"Content-Length": str(len(data)), "Content-Type": ctype, "x-ms-error-code": "ServerBusy"},
                status=status,
                reason=reason,
                preload_content=False,
                request_method=request.method,
            )
            return self.build_response(request, raw)

    return FaultyHTTPAdapter


def faulty_session(injector: FaultInjector, service: str) -> requests.Session:
    """A ``requests`` session whose every request may fail as the injector draws."""
    import requests

    session = requests.Session()
    adapter = _faulty_adapter_class()(injector, service)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ---------------------------------------------------------------- backends: at the port


class FaultyBackend(JobBackend):
    """Wraps a JobBackend: ``launch``, ``poll`` and ``cancel`` fail at the injector's rate with
    the errors the adapters raise for a busy or unreachable service."""

    def __init__(self, inner: JobBackend, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector
        self.kind = inner.kind

    def _fault(self, op: str, call: Any, *args: Any) -> Any:
        service = self.inner.kind or type(self.inner).__name__
        kind = self.injector.draw(f"{service}.{op}")
        if kind == "throttled":
            raise ThrottledError("injected fault: 429 Too Many Requests", service=service, status=429)
        if kind == "unavailable":
            raise TransientError("injected fault: 503 Server Busy", service=service, status=503)
        if kind == "timeout":
            raise TransientError("injected fault: the call timed out before it was sent", service=service)
        result = call(*args)
        if kind == "timeout-after":
            raise TransientError("injected fault: the call went through, its answer timed out", service=service)
        return result

    def launch(self, request: LaunchRequest) -> LaunchResult:
        return self._fault("launch", self.inner.launch, request)  # type: ignore[no-any-return]

    def poll(self, remote_id: str) -> StepStatus:
        return self._fault("poll", self.inner.poll, remote_id)  # type: ignore[no-any-return]

    def cancel(self, remote_id: str) -> None:
        self._fault("cancel", self.inner.cancel, remote_id)

    def logs(self, remote_id: str) -> list[StepLog]:  # reading logs (the console) is not a faulted call
        return self.inner.logs(remote_id)

    def __getattr__(self, name: str) -> Any:  # close(), from_settings'd attributes: the inner backend's
        return getattr(self.inner, name)
