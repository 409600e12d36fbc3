"""What each console page shows, assembled from runs, flows, the registry and the sources.

Pure functions over already-loaded data (plus the ``ConsoleSources`` callables and the
registry the caller hands in): they return plain dicts for the templates, with charts as
escaped SVG markup. Nothing here writes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.api.handlers import FLOW_RE
from shared.console.graph import graph_svg
from shared.console.plot import Point, metric_plot
from shared.console.timeline import gantt_rows, timeline_svg, trace_rows
from shared.engine.control import rerun_steps
from shared.engine.model import RunStatus
from shared.errors import ConveyorError, ValidationError

if TYPE_CHECKING:
    from shared.console.base import ConsoleSources
    from shared.engine.model import Run, StepRun
    from shared.flows.model import FlowsFile
    from shared.registry.base import ModelRegistry, ModelVersion

TRIGGER_KINDS = ("blob", "schedule", "azure_devops", "manual")
RUNS_SCANNED = 1000  # the runs page reads the newest 1000 runs once; filters and counts work on them
PAGE_SIZE = 25
MAX_QUERY = 200


# ---------------------------------------------------------------- small helpers


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, sort_keys=True, ensure_ascii=False)


def web_link(url: Any) -> str | None:
    """``url`` when it is an http(s) URL a browser may follow; None for anything else (file:, javascript:)."""
    if not isinstance(url, str):
        return None
    text = url.strip()
    return text if re.match(r"^https?://[^\s\"'<>]+$", text, re.IGNORECASE) else None


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return max((b - a).total_seconds(), 0.0)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def blob_name(run: Run) -> str:
    blob = run.trigger.blob or {}
    return str(blob.get("name") or "")


def trigger_line(run: Run) -> str:
    """A one-line description of what started the run (shown in the runs table)."""
    t = run.trigger
    if t.kind == "blob" and t.blob:
        return f"{t.blob.get('container', '')}/{t.blob.get('name', '')}"
    if t.kind == "azure_devops" and t.devops:
        d = t.devops
        commit = str(d.get("commit") or "")[:10]
        return " ".join(str(x) for x in (d.get("event_type"), d.get("branch"), commit) if x)
    if t.kind == "schedule" and t.schedule:
        return str(t.schedule.get("fire_time") or "")
    if t.params:
        return json.dumps(t.params, default=str, ensure_ascii=False)[:120]
    return t.source or ""


# ---------------------------------------------------------------- runs page


@dataclass(frozen=True)
class RunsQuery:
    flow: str = ""
    status: str = ""
    trigger: str = ""
    q: str = ""
    page: int = 1

    def as_params(self, **changes: Any) -> dict[str, Any]:
        values = {"flow": self.flow, "status": self.status, "trigger": self.trigger, "q": self.q, "page": self.page}
        values.update(changes)
        return {k: v for k, v in values.items() if v not in ("", None) and not (k == "page" and v == 1)}


def parse_runs_query(query: dict[str, str]) -> RunsQuery:
    flow = (query.get("flow") or "").strip()
    if flow and not FLOW_RE.match(flow):
        raise ValidationError(f"not a flow name: {flow[:64]!r}", field="flow")
    status = (query.get("status") or "").strip().lower()
    if status and status not in {s.value for s in RunStatus}:
        raise ValidationError(f"unknown status; one of {', '.join(s.value for s in RunStatus)}", field="status")
    trigger = (query.get("trigger") or "").strip()
    if trigger and trigger not in TRIGGER_KINDS:
        raise ValidationError(f"unknown trigger kind; one of {', '.join(TRIGGER_KINDS)}", field="trigger")
    q = (query.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        raise ValidationError(f"longer than {MAX_QUERY} characters", field="q")
    raw_page = (query.get("page") or "1").strip()
    if not raw_page.isdigit() or not 1 <= int(raw_page) <= 10_000:
        raise ValidationError("must be a page number from 1", field="page")
    return RunsQuery(flow=flow, status=status, trigger=trigger, q=q, page=int(raw_page))


def matches(run: Run, rq: RunsQuery) -> bool:
    if rq.flow and run.flow != rq.flow:
        return False
    if rq.status and run.status.value != rq.status:
        return False
    if rq.trigger and run.trigger.kind != rq.trigger:
        return False
    if rq.q:
        needle = rq.q.lower()
        blob = run.trigger.blob or {}
        hay = (run.run_id, str(blob.get("name") or ""), str(blob.get("url") or ""), run.trigger.source or "")
        if not any(needle in h.lower() for h in hay):
            return False
    return True


def runs_context(runs: list[Run], flows: FlowsFile, rq: RunsQuery, now: datetime) -> dict[str, Any]:
    """The runs table (filtered, one page), counts per status per flow, and the filter choices."""
    chosen = [r for r in runs if matches(r, rq)]
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    page = min(rq.page, pages)
    shown = chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    counts: dict[str, Counter[str]] = {}
    for r in runs:
        counts.setdefault(r.flow, Counter())[r.status.value] += 1
    rows = []
    for r in shown:
        current = r.current_step()
        rows.append(
            {
                "run_id": r.run_id,
                "flow": r.flow,
                "status": r.status.value,
                "trigger": r.trigger.kind,
                "what": trigger_line(r),
                "created": fmt_time(r.created_at),
                "duration": fmt_duration(seconds_between(r.started_at, r.ended_at or now) if r.started_at else None),
                "step": "" if r.status.terminal or current is None else f"{current.name} ({current.state.value})",
                "error": (r.error or "").splitlines()[0][:160] if r.error else "",
            }
        )
    return {
        "rows": rows,
        "matched": len(chosen),
        "scanned": len(runs),
        "scan_limit": RUNS_SCANNED,
        "page": page,
        "pages": pages,
        "counts": [(flow, dict(c), sum(c.values())) for flow, c in sorted(counts.items())],
        "statuses": [s.value for s in RunStatus],
        "flow_names": sorted(set(flows.flows) | set(counts)),
        "trigger_kinds": list(TRIGGER_KINDS),
        "rq": rq,
    }


# ---------------------------------------------------------------- run page


def trigger_facts(run: Run) -> list[tuple[str, str]]:
    t = run.trigger
    facts: list[tuple[str, str]] = [("trigger", t.kind)]
    if t.blob:
        for key in ("container", "name", "etag", "url", "size", "content_type", "event_time"):
            if t.blob.get(key) not in (None, ""):
                facts.append((f"blob {key}", str(t.blob[key])))
    if t.devops:
        for key in ("event_type", "repository", "branch", "commit", "build_id", "result"):
            if t.devops.get(key) not in (None, ""):
                facts.append((key.replace("_", " "), str(t.devops[key])))
    if t.schedule:
        for key in ("fire_time", "timezone", "cron"):
            if t.schedule.get(key) not in (None, ""):
                facts.append((f"schedule {key.replace('_', ' ')}", str(t.schedule[key])))
    if t.params:
        facts.append(("params", json.dumps(t.params, default=str, ensure_ascii=False, sort_keys=True)))
    if t.source and not t.blob:
        facts.append(("source", t.source))
    return facts


def step_links(step: StepRun) -> list[tuple[str, str]]:
    """Links to the remote service's page for the step (Batch job, Databricks run, Azure ML job)."""
    links: list[tuple[str, str]] = []
    remote = None if step.kind == "deploy" else step.remote_url  # a deploy's URL is the scoring POST endpoint
    for label, url in (("remote job", remote), ("run page", step.outputs.get("run_page_url"))):
        href = web_link(url)
        if href and all(href != h for _, h in links):
            links.append((label, href))
    return links


def step_context(run: Run, step: StepRun, sources: ConsoleSources, now: datetime) -> dict[str, Any]:
    attempts = []
    for h in step.history:
        start, end = h.get("started_at"), h.get("ended_at")
        attempts.append(
            {
                "attempt": h.get("attempt"),
                "outcome": str(h.get("outcome") or ""),
                "started": str(start or "-"),
                "ended": str(end or "-"),
                "remote_id": str(h.get("remote_id") or h.get("key") or ""),
                "error": str(h.get("error") or ""),
            }
        )
    try:
        logs = sources.logs(run, step)
    except (ConveyorError, OSError) as exc:
        logs = []
        log_error = str(exc)
    else:
        log_error = ""
    progress = step.progress or {}
    return {
        "name": step.name,
        "kind": step.kind,
        "state": step.state.value,
        "attempt": step.attempt,
        "key": step.key or "",
        "remote_id": step.remote_id or "",
        "remote_text": step.remote_url if step.remote_url and not web_link(step.remote_url) else "",
        "links": step_links(step),
        "started": fmt_time(step.started_at),
        "duration": fmt_duration(seconds_between(step.started_at, step.ended_at or now) if step.started_at else None),
        "progress": {"done": int(progress.get("done", 0)), "total": int(progress.get("total", 0))}
        if progress.get("total")
        else None,
        "outputs": pretty(step.outputs) if step.outputs else "",
        "error": step.error or "",
        "retryable": step.error_retryable,
        "attempts": attempts,
        "logs": logs,
        "log_error": log_error,
    }


@dataclass(frozen=True)
class Link:
    """One element of the lineage chain."""

    what: str
    value: str
    detail: str = ""
    href: str | None = None  # a remote service's page (http/https only)
    run: str | None = None  # a run of this console
    model: str | None = None  # a model page of this console


def lineage(run: Run) -> list[Link]:
    """blob + eTag (or commit/branch, or params) -> run -> each step's remote id -> model version -> endpoint."""
    t = run.trigger
    chain: list[Link] = []
    if t.blob:
        where = f"{t.blob.get('container', '')}/{t.blob.get('name', '')}"
        chain.append(Link("blob", where, f"eTag {t.blob.get('etag', '')}"))
    elif t.devops:
        d = t.devops
        repo = " ".join(str(x) for x in (d.get("repository"), d.get("branch")) if x)
        chain.append(Link("commit", str(d.get("commit") or d.get("event_type") or ""), repo))
    elif t.schedule:
        chain.append(Link("schedule", str(t.schedule.get("fire_time") or "")))
    else:
        params = json.dumps(t.params, default=str, ensure_ascii=False) if t.params else ""
        chain.append(Link(t.kind, params, t.source))
    chain.append(Link("run", run.run_id, f"{run.flow} · {run.status.value}", run=run.run_id))
    for step in run.steps:
        if step.remote_id:
            links = step_links(step)
            href = links[0][1] if links else None
            chain.append(Link(f"{step.kind} {step.name}", step.remote_id, step.state.value, href=href))
    for step in run.steps:
        out = step.outputs or {}
        if step.kind == "register" and out.get("version"):
            name = str(out.get("model_name") or "")
            chain.append(Link("model version", f"{name} v{out['version']}", model=name or None))
        if step.kind == "deploy" and out.get("endpoint"):
            serving = out.get("serving_version")
            detail = f"serving v{serving}" if serving else "nothing serving"
            if out.get("scoring_url"):
                detail += f" at {out['scoring_url']}"
            chain.append(Link("endpoint", str(out["endpoint"]), detail))
    return chain


def run_context(run: Run, flows: FlowsFile, sources: ConsoleSources, now: datetime) -> dict[str, Any]:
    nodes = sources.graph(run)
    try:
        records = sources.trace(run.run_id)
        trace_error = ""
    except (ConveyorError, OSError) as exc:
        records, trace_error = [], str(exc)
    spans = trace_rows(records)
    return {
        "run": run,
        "status": run.status.value,
        "terminal": run.status.terminal,
        "facts": trigger_facts(run),
        "created": fmt_time(run.created_at),
        "started": fmt_time(run.started_at),
        "ended": fmt_time(run.ended_at),
        "queued_for": fmt_duration(seconds_between(run.created_at, run.started_at)),
        "duration": fmt_duration(seconds_between(run.started_at, run.ended_at or now) if run.started_at else None),
        "graph": graph_svg(nodes),
        "fanouts": [n for n in nodes if n.instances],
        "gantt": timeline_svg(gantt_rows(run, now), "timeline of every attempt", "gantt"),
        "steps": [step_context(run, s, sources, now) for s in run.steps],
        "gate": run.gate,
        "lineage": lineage(run),
        "trace": timeline_svg(spans, "trace waterfall", "waterfall"),
        "trace_spans": len(spans),
        "trace_events": sum(1 for r in records if r.get("type") == "event"),
        "trace_note": trace_error or sources.trace_note,
        "rerun_steps": rerun_steps(run, flows),
    }


# ---------------------------------------------------------------- models


def flow_metric(flows: FlowsFile, name: str) -> str | None:
    """The metric the gate of the flow that trains ``name`` compares (the plot's y axis)."""
    for flow in flows.flows.values():
        if flow.model is not None and flow.model.name == name:
            return flow.model.metric
    return None


def flow_model_names(flows: FlowsFile) -> list[str]:
    return sorted({flow.model.name for flow in flows.flows.values() if flow.model is not None})


def _version_key(v: ModelVersion) -> tuple[int, str]:
    return (int(v.version), v.version) if v.version.isdigit() else (-1, v.version)


def model_context(registry: ModelRegistry, flows: FlowsFile, name: str) -> dict[str, Any]:
    versions = sorted(registry.versions(name), key=_version_key)
    champion = registry.champion(name) if versions else None
    try:
        previous = registry.previous(name) if versions else None
    except ConveyorError:
        previous = None  # a registry that does not keep it: nothing to mark
    metric = flow_metric(flows, name) or next((m for v in versions for m in sorted(v.metrics)), None)
    roles = {}
    if previous is not None:
        roles[previous.version] = "previous"
    if champion is not None:
        roles[champion.version] = "champion"
    rows, points = [], []
    for v in versions:
        decision = v.tags.get("gate.decision", "")
        rows.append(
            {
                "version": v.version,
                "metrics": sorted(v.metrics.items()),
                "role": roles.get(v.version, ""),
                "decision": decision,
                "reason": v.tags.get("gate.reason", ""),
                "candidate": v.tags.get("gate.candidate", ""),
                "champion_value": v.tags.get("gate.champion", ""),
                "champion_version": v.tags.get("gate.champion_version", ""),
                "run_id": v.tags.get("conveyor.run_id", ""),
                "blob": v.tags.get("source.blob_url", ""),
                "source_uri": v.source_uri,
            }
        )
        if metric and metric in v.metrics:
            points.append(Point(v.version, float(v.metrics[metric]), decision, roles.get(v.version, "")))
    return {
        "name": name,
        "metric": metric,
        "rows": list(reversed(rows)),  # newest first in the table
        "champion": champion.version if champion else None,
        "previous": previous.version if previous else None,
        "plot": metric_plot(points, metric or ""),
    }
