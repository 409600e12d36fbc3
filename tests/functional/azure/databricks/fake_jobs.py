"""A fake Azure Databricks workspace on loopback: the Jobs API 2.2 endpoints Conveyor uses.

Shapes follow the Jobs API reference and databricks-sdk's dataclasses (service/jobs.py):

- ``GET /.well-known/databricks-config`` (unauthenticated; the SDK probes it when it builds its
  Config): ``{"oidc_endpoint", "account_id", "workspace_id", "cloud"}``;
- ``POST /api/2.2/jobs/run-now`` ``{job_id, idempotency_token, python_params...}`` → ``{run_id, number_in_job}``;
- ``POST /api/2.2/jobs/runs/submit`` ``{run_name, idempotency_token, tasks, environments...}`` → ``{run_id}``;
- ``GET /api/2.2/jobs/runs/get?run_id=`` → a Run (``state`` + ``status``, ``tasks`` with their own
  run ids, ``run_page_url``); an unknown run is ``400 INVALID_PARAMETER_VALUE "Run N does not exist."``;
- ``GET /api/2.2/jobs/runs/get-output?run_id=`` → ``{metadata, notebook_output | logs, error, error_trace}``;
  refused for the parent of a run with several tasks, as the service does;
- ``POST /api/2.2/jobs/runs/cancel`` ``{run_id}`` → ``{}`` (the run ends CANCELED).

A repeated ``idempotency_token`` answers the run it already started (the service's
behaviour). Errors use the service's body shape ``{"error_code", "message"}``; ``fail_next``
scripts one failing answer (429 with Retry-After, 503, 403...) for a path. Every request is
recorded (method, path, query, JSON body, headers) for the tests to assert on.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug import Request, Response
from werkzeug.datastructures import Headers

WORKSPACE_ID = "1234567890123456"
ACCOUNT_ID = "6f5f7c1e-0000-4a4a-9b9b-123456789abc"
API = "/api/2.2/jobs"

MULTI_TASK_OUTPUT_ERROR = (
    "Retrieving the output of runs with multiple tasks is not supported. "
    "Please retrieve the output of each individual task run instead."
)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: Headers  # case-insensitive


@dataclass
class FakeTask:
    run_id: int
    task_key: str
    spec: dict[str, Any]
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    end_time: int = 0


@dataclass
class FakeRun:
    run_id: int
    run_name: str
    run_type: str
    job_id: int | None
    tasks: list[FakeTask]
    request: dict[str, Any]
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = ""
    termination_code: str | None = None
    termination_type: str | None = None
    with_status: bool = True  # Jobs API 2.2 also sends the newer ``status`` object
    with_state: bool = True


_V2_STATE = {"WAITING_FOR_RETRY": "WAITING", "SKIPPED": "TERMINATED", "INTERNAL_ERROR": "TERMINATED"}


class FakeDatabricks:
    def __init__(
        self, base_url: str, *, token: str | None = "dapi-fake-token", jobs: dict[int, list[str]] | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token  # the accepted bearer token; None: any
        self.jobs = jobs if jobs is not None else {42: ["etl"]}  # job_id -> task keys
        self.runs: dict[int, FakeRun] = {}
        self.tasks: dict[int, tuple[FakeRun, FakeTask]] = {}
        self.tokens: dict[str, int] = {}
        self.requests: list[Recorded] = []
        self._ids = itertools.count(1001)
        self._failures: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ test controls

    def install(self, httpserver: Any) -> FakeDatabricks:
        httpserver.expect_request(re.compile(".*")).respond_with_handler(self.handle)
        return self

    def fail_next(
        self,
        path: str,
        status: int,
        error_code: str,
        message: str,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {"error_code": error_code, "message": message}
        self._failures.setdefault(path, []).extend([(status, body, headers or {})] * times)

    def set_state(
        self,
        run_id: int,
        life_cycle_state: str,
        result_state: str | None = None,
        message: str = "",
        *,
        termination_code: str | None = None,
        termination_type: str | None = None,
        task_states: list[tuple[str, str | None]] | None = None,
    ) -> None:
        run = self.runs[run_id]
        run.life_cycle_state, run.result_state, run.state_message = life_cycle_state, result_state, message
        run.termination_code, run.termination_type = termination_code, termination_type
        for i, task in enumerate(run.tasks):
            life, result = task_states[i] if task_states else (life_cycle_state, result_state)
            task.life_cycle_state, task.result_state = life, result
            task.state_message = message if result not in (None, "SUCCESS") else ""
            if life == "TERMINATED":
                task.end_time = 1_700_000_000_000 + i

    def set_output(self, task_run_id: int, **output: Any) -> None:
        self.tasks[task_run_id][1].output = output

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def api_calls(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/api/")]

    # ------------------------------------------------------------ HTTP

    def handle(self, request: Request) -> Response:
        body: Any = None
        if request.data:
            try:
                body = json.loads(request.data)
            except ValueError:
                return _error(400, "MALFORMED_REQUEST", "Invalid JSON given in the body of the request")
        with self._lock:
            self.requests.append(
                Recorded(request.method, request.path, dict(request.args), body, Headers(request.headers.items()))
            )
            if request.path == "/.well-known/databricks-config" and request.method == "GET":
                return _json(
                    {
                        "oidc_endpoint": f"{self.base_url}/oidc",
                        "account_id": ACCOUNT_ID,
                        "workspace_id": WORKSPACE_ID,
                        "cloud": "AZURE",
                    }
                )
            if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
                return _error(401, "UNAUTHENTICATED", "Invalid access token.")
            queued = self._failures.get(request.path)
            if queued:
                status, err, headers = queued.pop(0)
                return Response(json.dumps(err), status=status, headers=headers, content_type="application/json")
            route = (request.method, request.path)
            if route == ("POST", f"{API}/run-now"):
                return self._run_now(body or {})
            if route == ("POST", f"{API}/runs/submit"):
                return self._submit(body or {})
            if route == ("GET", f"{API}/runs/get"):
                return self._get(request.args.get("run_id", ""))
            if route == ("GET", f"{API}/runs/get-output"):
                return self._get_output(request.args.get("run_id", ""))
            if route == ("POST", f"{API}/runs/cancel"):
                return self._cancel(body or {})
            return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.path}'")

    def _dedupe(self, body: dict[str, Any]) -> Response | None:
        token = body.get("idempotency_token")
        if token is not None and len(str(token)) > 64:
            return _error(400, "INVALID_PARAMETER_VALUE", "idempotency_token must be at most 64 characters")
        if token in self.tokens:
            run = self.runs[self.tokens[token]]
            return _json({"run_id": run.run_id, "number_in_job": run.run_id})
        return None

    def _new_run(self, body: dict[str, Any], name: str, run_type: str, job_id: int | None, tasks: list[dict]) -> int:
        run_id = next(self._ids)
        fake_tasks = [FakeTask(next(self._ids), t["task_key"], t) for t in tasks]
        run = FakeRun(run_id, name, run_type, job_id, fake_tasks, body)
        self.runs[run_id] = run
        for task in fake_tasks:
            self.tasks[task.run_id] = (run, task)
        if body.get("idempotency_token") is not None:
            self.tokens[body["idempotency_token"]] = run_id
        return run_id

    def _run_now(self, body: dict[str, Any]) -> Response:
        if not isinstance(body.get("job_id"), int):
            return _error(400, "INVALID_PARAMETER_VALUE", "Missing required field: job_id")
        if body["job_id"] not in self.jobs:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Job {body['job_id']} does not exist.")
        if (seen := self._dedupe(body)) is not None:
            return seen
        tasks = [
            {"task_key": k, "spark_python_task": {"parameters": body.get("python_params", [])}}
            for k in self.jobs[body["job_id"]]
        ]
        run_id = self._new_run(body, f"job-{body['job_id']}", "JOB_RUN", body["job_id"], tasks)
        return _json({"run_id": run_id, "number_in_job": run_id})

    def _submit(self, body: dict[str, Any]) -> Response:
        tasks = body.get("tasks")
        if not tasks:
            return _error(400, "INVALID_PARAMETER_VALUE", "At least one task is required.")
        env_keys = {e.get("environment_key") for e in body.get("environments", [])}
        for task in tasks:
            if not task.get("task_key"):
                return _error(400, "INVALID_PARAMETER_VALUE", "Missing required field: task_key")
            spt = task.get("spark_python_task")
            if not spt or not spt.get("python_file"):
                return _error(400, "INVALID_PARAMETER_VALUE", "Missing required field: spark_python_task.python_file")
            if not (task.get("existing_cluster_id") or task.get("new_cluster")):
                key = task.get("environment_key")
                if not key:
                    return _error(
                        400,
                        "INVALID_PARAMETER_VALUE",
                        f"A task environment can not be found for task {task['task_key']}. "
                        "Please specify an environment_key.",
                    )
                if key not in env_keys:
                    return _error(400, "INVALID_PARAMETER_VALUE", f"Environment {key} is not defined.")
        if (seen := self._dedupe(body)) is not None:
            return seen
        run_id = self._new_run(body, body.get("run_name") or "Untitled", "SUBMIT_RUN", None, tasks)
        return _json({"run_id": run_id})

    def _lookup(self, raw: str) -> tuple[FakeRun | None, FakeTask | None, Response | None]:
        try:
            run_id = int(raw)
        except ValueError:
            return None, None, _error(400, "INVALID_PARAMETER_VALUE", f"Invalid run_id: {raw!r}")
        if run_id in self.runs:
            return self.runs[run_id], None, None
        if run_id in self.tasks:
            run, task = self.tasks[run_id]
            return run, task, None
        return None, None, _error(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")

    def _get(self, raw: str) -> Response:
        run, task, err = self._lookup(raw)
        if err is not None or run is None:
            return err or _error(500, "INTERNAL_ERROR", "lookup failed")
        if task is not None:
            return _json(self._task_json(run, task))
        return _json(self._run_json(run))

    def _get_output(self, raw: str) -> Response:
        run, task, err = self._lookup(raw)
        if err is not None or run is None:
            return err or _error(500, "INTERNAL_ERROR", "lookup failed")
        if task is None:
            if len(run.tasks) > 1:
                return _error(400, "INVALID_PARAMETER_VALUE", MULTI_TASK_OUTPUT_ERROR)
            task = run.tasks[0]
        return _json({"metadata": self._task_json(run, task), **task.output})

    def _cancel(self, body: dict[str, Any]) -> Response:
        run, _task, err = self._lookup(str(body.get("run_id", "")))
        if err is not None or run is None:
            return err or _error(500, "INTERNAL_ERROR", "lookup failed")
        if run.life_cycle_state not in ("TERMINATED", "SKIPPED", "INTERNAL_ERROR"):
            self.set_state(
                run.run_id,
                "TERMINATED",
                "CANCELED",
                "Run cancelled.",
                termination_code="USER_CANCELED",
                termination_type="SUCCESS",
            )
        return _json({})

    # ------------------------------------------------------------ shapes

    def _state(self, life: str, result: str | None, message: str) -> dict[str, Any]:
        state: dict[str, Any] = {
            "life_cycle_state": life,
            "state_message": message,
            "user_cancelled_or_timedout": False,
        }
        if result is not None:
            state["result_state"] = result
            state["user_cancelled_or_timedout"] = result in ("CANCELED", "TIMEDOUT")
        return state

    def _status(self, life: str, result: str | None, message: str, code: str | None, ttype: str | None) -> dict:
        status: dict[str, Any] = {"state": _V2_STATE.get(life, life)}
        if status["state"] == "TERMINATED":
            status["termination_details"] = {
                "code": code or {"SUCCESS": "SUCCESS", "CANCELED": "CANCELED"}.get(result or "", "RUN_EXECUTION_ERROR"),
                "type": ttype or ("SUCCESS" if result in ("SUCCESS", "CANCELED") else "CLIENT_ERROR"),
                "message": message,
            }
        return status

    def _page_url(self, run: FakeRun, run_id: int) -> str:
        job = run.job_id if run.job_id is not None else 900000 + run.run_id
        return f"{self.base_url}/?o={WORKSPACE_ID}#job/{job}/run/{run_id}"

    def _task_json(self, run: FakeRun, task: FakeTask) -> dict[str, Any]:
        spec = {k: v for k, v in task.spec.items() if k != "task_key"}
        out: dict[str, Any] = {
            "run_id": task.run_id,
            "task_key": task.task_key,
            "attempt_number": 0,
            "start_time": 1_700_000_000_000,
            "end_time": task.end_time,
            "run_page_url": self._page_url(run, task.run_id),
            **spec,
        }
        if run.with_state:
            out["state"] = self._state(task.life_cycle_state, task.result_state, task.state_message)
        if run.with_status:
            out["status"] = self._status(task.life_cycle_state, task.result_state, task.state_message, None, None)
        return out

    def _run_json(self, run: FakeRun) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "creator_user_name": "conveyor@example.com",
            "run_name": run.run_name,
            "run_type": run.run_type,
            "start_time": 1_700_000_000_000,
            "setup_duration": 0,
            "execution_duration": 0,
            "cleanup_duration": 0,
            "end_time": 0,
            "run_page_url": self._page_url(run, run.run_id),
            "tasks": [self._task_json(run, t) for t in run.tasks],
            "format": "MULTI_TASK",
        }
        if run.job_id is not None:
            out["job_id"] = run.job_id
        if run.with_state:
            out["state"] = self._state(run.life_cycle_state, run.result_state, run.state_message)
        if run.with_status:
            out["status"] = self._status(
                run.life_cycle_state, run.result_state, run.state_message, run.termination_code, run.termination_type
            )
        return out


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error_code": code, "message": message}, status)
