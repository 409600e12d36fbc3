"""A faithful-enough fake of the Azure Batch data-plane REST API (api-version 2025-06-01).

Served over HTTPS on loopback by pytest-httpserver (azure-core refuses bearer tokens over plain
HTTP), with a self-signed certificate the client is told to trust. It keeps jobs and tasks in
memory, answers with the service's JSON shapes (camelCase bodies, ``odata.metadata``, error
bodies ``{"code", "message": {"lang", "value"}}``, 201/202/200 status codes and headers as the
REST reference documents), checks what the real service checks that matters here (api-version,
bearer token, 100 tasks per addtaskcollection, JobExists/TaskExists/JobNotFound/JobCompleted),
and records every request so tests can assert them exactly. ``fail(...)`` injects faults.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from werkzeug import Request, Response

API_VERSION = "2025-06-01"
TOKEN = "fake-token"
JSON_ODATA = "application/json;odata=minimalmetadata"
ERRORS_ELEMENT = "Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
SERVER_BUSY = "The server is currently unable to receive requests. Please retry your request."


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    code: str
    message: str
    times: int
    headers: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeBatchService:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.task_add_server_errors: dict[str, int] = {}  # task id -> times to answer servererror
        self.task_add_client_errors: dict[str, tuple[str, str]] = {}  # task id -> (code, message)
        self.page_size = 1000
        self.task_files: dict[tuple[str, str, str], bytes] = {}  # (job, task, path) -> a file on the node
        self.add_delay = 0.0
        self.inflight_adds = 0
        self.max_inflight_adds = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ test controls

    def fail(
        self, method: str, path: str, status: int, code: str, message: str, times: int = 1, **headers: str
    ) -> None:
        """Answer the next ``times`` requests matching (method, path regex) with an error."""
        self.faults.append(Fault(method, re.compile(path), status, code, message, times, dict(headers)))

    def calls(self, method: str, path: str) -> list[Recorded]:
        rx = re.compile(path)
        return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]

    def seed_job(self, job_id: str, pool: str, mode: str, task_ids: list[str]) -> None:
        """A job left behind by a launch that died mid-way."""
        self.jobs[job_id] = self._job_json({"id": job_id, "poolInfo": {"poolId": pool}, "onAllTasksComplete": mode})
        self.tasks[job_id] = {t: self._task_json(job_id, {"id": t, "commandLine": "true"}) for t in task_ids}

    def set_task_states(self, job_id: str, *, running: int = 0, completed: int = 0) -> None:
        """Move the first tasks (by id) to completed (success) / running."""
        ids = sorted(self.tasks[job_id])
        for i, tid in enumerate(ids):
            t = self.tasks[job_id][tid]
            if i < completed:
                self._complete(t, None)
            elif i < completed + running:
                t["state"] = "running"

    def finish(self, job_id: str, failures: dict[str, dict[str, Any]] | None = None) -> None:
        """Complete every task (``failures``: task id -> executionInfo), then apply the job's
        onAllTasksComplete as the service does."""
        failures = failures or {}
        for tid, t in self.tasks[job_id].items():
            self._complete(t, failures.get(tid))
        self._maybe_auto_terminate(job_id)

    # ------------------------------------------------------------ plumbing

    def handle(self, request: Request) -> Response:
        body: Any = None
        raw = request.get_data()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query, keep_blank_values=True).items()}
        rec = Recorded(request.method, request.path, query, {k.lower(): v for k, v in request.headers.items()}, body)
        with self._lock:
            self.requests.append(rec)
            fault = self._take_fault(rec)
        if fault is not None:
            return self._error(fault.status, fault.code, fault.message, headers=fault.headers)
        if rec.headers.get("authorization") != f"Bearer {TOKEN}":
            return self._error(401, "AuthenticationFailed", "Server failed to authenticate the request.")
        if query.get("api-version") != API_VERSION:
            return self._error(
                400,
                "InvalidQueryParameterValue",
                "Value for one of the query parameters specified in the request URI is invalid.",
            )
        return self._route(rec)

    def _take_fault(self, rec: Recorded) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.method == rec.method and f.path.fullmatch(rec.path):
                f.times -= 1
                return f
        return None

    def _route(self, rec: Recorded) -> Response:
        m, p = rec.method, rec.path
        if m == "POST" and p == "/jobs":
            return self._create_job(rec)
        if (g := re.fullmatch(r"/jobs/([^/]+)", p)) and m in ("GET", "PATCH"):
            return self._get_job(g[1]) if m == "GET" else self._update_job(g[1], rec)
        if m == "POST" and (g := re.fullmatch(r"/jobs/([^/]+)/addtaskcollection", p)):
            return self._add_tasks(g[1], rec)
        if m == "GET" and (g := re.fullmatch(r"/jobs/([^/]+)/taskcounts", p)):
            return self._task_counts(g[1])
        if m == "GET" and (g := re.fullmatch(r"/jobs/([^/]+)/tasks", p)):
            return self._list_tasks(g[1], rec)
        if m == "POST" and (g := re.fullmatch(r"/jobs/([^/]+)/terminate", p)):
            return self._terminate(g[1], rec)
        if m == "GET" and (g := re.fullmatch(r"/jobs/([^/]+)/tasks/([^/]+)/files/(.+)", p)):
            return self._task_file(g[1], g[2], g[3])
        return self._error(404, "InvalidUri", "The requested URI does not represent any resource on the server.")

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        rid = str(uuid.uuid4())
        body = {
            "odata.metadata": f"{self.base_url}/$metadata#{ERRORS_ELEMENT}",
            "code": code,
            "message": {"lang": "en-US", "value": f"{message}\nRequestId:{rid}\nTime:{_now()}"},
        }
        return Response(
            json.dumps(body), status=status, content_type=JSON_ODATA, headers={"request-id": rid, **(headers or {})}
        )

    def _ok(self, status: int, body: Any = None, **headers: str) -> Response:
        hdrs = {"request-id": str(uuid.uuid4()), **headers}
        if body is None:
            return Response(b"", status=status, headers=hdrs)
        return Response(json.dumps(body), status=status, content_type=JSON_ODATA, headers=hdrs)

    def _job_json(self, body: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {
            "id": body["id"],
            "url": f"{self.base_url}/jobs/{body['id']}",
            "eTag": f"0x{uuid.uuid4().hex[:15].upper()}",
            "lastModified": now,
            "creationTime": now,
            "state": "active",
            "stateTransitionTime": now,
            "priority": 0,
            "usesTaskDependencies": body.get("usesTaskDependencies", False),
            "poolInfo": body["poolInfo"],
            "onAllTasksComplete": body.get("onAllTasksComplete", "noaction"),
            "onTaskFailure": "noaction",
            "metadata": body.get("metadata", []),
            "commonEnvironmentSettings": body.get("commonEnvironmentSettings", []),
            "executionInfo": {"startTime": now, "poolId": body["poolInfo"].get("poolId")},
        }

    def _task_json(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {
            **body,
            "url": f"{self.base_url}/jobs/{job_id}/tasks/{body['id']}",
            "eTag": f"0x{uuid.uuid4().hex[:15].upper()}",
            "creationTime": now,
            "lastModified": now,
            "state": "active",
            "stateTransitionTime": now,
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
        }

    def _complete(self, task: dict[str, Any], failure: dict[str, Any] | None) -> None:
        now = _now()
        task["state"] = "completed"
        info = {"startTime": now, "endTime": now, "retryCount": 0, "requeueCount": 0}
        if failure is None:
            info.update({"exitCode": 0, "result": "success"})
        else:
            info.update({"result": "failure", **failure})
        task["executionInfo"] = info

    def _maybe_auto_terminate(self, job_id: str) -> None:
        job = self.jobs[job_id]
        tasks = self.tasks.get(job_id, {})
        if (
            job["state"] == "active"
            and job["onAllTasksComplete"] == "terminatejob"
            and all(t["state"] == "completed" for t in tasks.values())
        ):
            job["state"] = "completed"
            job["executionInfo"]["endTime"] = _now()
            job["executionInfo"]["terminateReason"] = "AllTasksComplete"

    # ------------------------------------------------------------ operations

    def _create_job(self, rec: Recorded) -> Response:
        body = rec.body if isinstance(rec.body, dict) else {}
        job_id = body.get("id")
        if not isinstance(job_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job_id):
            return self._error(
                400,
                "InvalidPropertyValue",
                "The value provided for one of the properties in the request body is invalid.",
            )
        if "poolInfo" not in body:
            return self._error(
                400, "MissingRequiredProperty", "A required property was not specified in the request body."
            )
        with self._lock:
            if job_id in self.jobs:
                return self._error(409, "JobExists", "The specified job already exists.")
            self.jobs[job_id] = self._job_json(body)
            self.tasks[job_id] = {}
            job = self.jobs[job_id]
        return self._ok(
            201,
            ETag=job["eTag"],
            **{"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "DataServiceId": job["url"], "Location": job["url"]},
        )

    def _get_job(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return self._error(404, "JobNotFound", "The specified job does not exist.")
        return self._ok(200, {"odata.metadata": f"{self.base_url}/$metadata#jobs/@Element", **job}, ETag=job["eTag"])

    def _update_job(self, job_id: str, rec: Recorded) -> Response:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self._error(404, "JobNotFound", "The specified job does not exist.")
            body = rec.body if isinstance(rec.body, dict) else {}
            if "onAllTasksComplete" in body:
                job["onAllTasksComplete"] = body["onAllTasksComplete"]
            if "metadata" in body:
                job["metadata"] = body["metadata"]
            self._maybe_auto_terminate(job_id)
        return self._ok(200, ETag=job["eTag"], DataServiceId=job["url"])

    def _add_tasks(self, job_id: str, rec: Recorded) -> Response:
        with self._lock:
            self.inflight_adds += 1
            self.max_inflight_adds = max(self.max_inflight_adds, self.inflight_adds)
        try:
            if self.add_delay:
                time.sleep(self.add_delay)
            with self._lock:
                job = self.jobs.get(job_id)
                if job is None:
                    return self._error(404, "JobNotFound", "The specified job does not exist.")
                if job["state"] != "active":
                    return self._error(409, "JobCompleted", "The specified job is already in a completed state.")
                values = (rec.body or {}).get("value")
                if not isinstance(values, list) or not values:
                    return self._error(
                        400, "MissingRequiredProperty", "A required property was not specified in the request body."
                    )
                if len(values) > 100:
                    return self._error(
                        413,
                        "RequestBodyTooLarge",
                        "The request body is too large and exceeds the maximum permissible limit.",
                    )
                results = []
                for t in values:
                    tid = t["id"]
                    if self.task_add_server_errors.get(tid, 0) > 0:
                        self.task_add_server_errors[tid] -= 1
                        results.append(
                            {
                                "status": "servererror",
                                "taskId": tid,
                                "error": {
                                    "code": "ServerBusy",
                                    "message": {
                                        "lang": "en-US",
                                        "value": SERVER_BUSY,
                                    },
                                },
                            }
                        )
                    elif tid in self.task_add_client_errors:
                        code, msg = self.task_add_client_errors[tid]
                        results.append(
                            {
                                "status": "clienterror",
                                "taskId": tid,
                                "error": {"code": code, "message": {"lang": "en-US", "value": msg}},
                            }
                        )
                    elif tid in self.tasks[job_id]:
                        results.append(
                            {
                                "status": "clienterror",
                                "taskId": tid,
                                "error": {
                                    "code": "TaskExists",
                                    "message": {"lang": "en-US", "value": "The specified task already exists."},
                                },
                            }
                        )
                    else:
                        task = self._task_json(job_id, t)
                        self.tasks[job_id][tid] = task
                        results.append(
                            {
                                "status": "success",
                                "taskId": tid,
                                "eTag": task["eTag"],
                                "lastModified": task["lastModified"],
                                "location": task["url"],
                            }
                        )
            return self._ok(200, {"odata.metadata": f"{self.base_url}/$metadata#taskaddresult", "value": results})
        finally:
            with self._lock:
                self.inflight_adds -= 1

    def _task_counts(self, job_id: str) -> Response:
        if job_id not in self.jobs:
            return self._error(404, "JobNotFound", "The specified job does not exist.")
        tasks = list(self.tasks[job_id].values())
        c = {
            "active": sum(t["state"] == "active" for t in tasks),
            "running": sum(t["state"] in ("running", "preparing") for t in tasks),
            "completed": sum(t["state"] == "completed" for t in tasks),
            "succeeded": sum(t["executionInfo"].get("result") == "success" for t in tasks),
            "failed": sum(t["executionInfo"].get("result") == "failure" for t in tasks),
        }
        return self._ok(
            200,
            {
                "odata.metadata": f"{self.base_url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.TaskCountsResult",
                "taskCounts": c,
                "taskSlotCounts": dict(c),
            },
        )

    def _list_tasks(self, job_id: str, rec: Recorded) -> Response:
        if job_id not in self.jobs:
            return self._error(404, "JobNotFound", "The specified job does not exist.")
        flt = rec.query.get("$filter")
        tasks = sorted(self.tasks[job_id].values(), key=lambda t: t["id"])
        if flt is not None:
            m = re.fullmatch(r"executionInfo/result eq '(success|failure)'", flt)
            if not m:
                return self._error(400, "InvalidQueryParameterValue", "The $filter clause is not supported.")
            tasks = [t for t in tasks if t["executionInfo"].get("result") == m[1]]
        start = int(rec.query.get("skip", "0"))  # our own continuation token inside odata.nextLink
        page = tasks[start : start + self.page_size]
        body: dict[str, Any] = {"odata.metadata": f"{self.base_url}/$metadata#tasks", "value": page}
        if start + self.page_size < len(tasks):
            nxt = f"{self.base_url}/jobs/{job_id}/tasks?api-version={API_VERSION}&skip={start + self.page_size}"
            if flt is not None:
                nxt += "&$filter=" + flt.replace(" ", "%20").replace("'", "%27")
            body["odata.nextLink"] = nxt
        return self._ok(200, body)

    def _task_file(self, job_id: str, task_id: str, path: str) -> Response:
        """File - Get From Task: the file's bytes as application/octet-stream, with its properties."""
        if job_id not in self.jobs:
            return self._error(404, "JobNotFound", "The specified job does not exist.")
        if task_id not in self.tasks.get(job_id, {}):
            return self._error(404, "TaskNotFound", "The specified task does not exist.")
        data = self.task_files.get((job_id, task_id, path))
        if data is None:
            return self._error(404, "FileNotFound", "The specified file does not exist.")
        headers = {
            "request-id": str(uuid.uuid4()),
            "ocp-batch-file-isdirectory": "False",
            "ocp-batch-file-url": f"{self.base_url}/jobs/{job_id}/tasks/{task_id}/files/{path}",
            "ocp-creation-time": dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Last-Modified": dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        return Response(data, status=200, content_type="application/octet-stream", headers=headers)

    def _terminate(self, job_id: str, rec: Recorded) -> Response:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self._error(404, "JobNotFound", "The specified job does not exist.")
            if job["state"] in ("completed", "terminating"):
                return self._error(409, "JobCompleted", "The specified job is already in a completed state.")
            job["state"] = "completed"
            job["executionInfo"]["endTime"] = _now()
            reason = (rec.body or {}).get("terminateReason") if isinstance(rec.body, dict) else None
            job["executionInfo"]["terminateReason"] = reason or "UserTerminate"
        return self._ok(202, ETag=job["eTag"], DataServiceId=job["url"])
