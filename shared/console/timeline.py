"""Horizontal time bars as SVG: the run's Gantt (every attempt, waits, retries) and the trace waterfall.

``gantt_rows(run, now)`` turns a run into rows of bars: the run (queued, then running), then
one row per step with the wait before its first attempt, each attempt coloured by outcome,
and the waits between attempts (retry backoff, or a rerun). ``trace_rows(records)`` turns
span records (``shared.telemetry.local``) into a waterfall indented by parent. Both are pure;
``timeline_svg`` draws either on a shared time axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from shared.console.svg import clip, el, join, num, svg

if TYPE_CHECKING:
    from shared.engine.model import Run

LABEL_W, CHART_W, ROW_H, BAR_H, AXIS_H = 170.0, 760.0, 24.0, 14.0, 26.0
MAX_TRACE_ROWS = 300


@dataclass(frozen=True)
class Bar:
    start: datetime
    end: datetime
    css: str  # attempt-succeeded, attempt-failed, wait, retry-wait, queued, span, span-error, ...
    title: str


@dataclass
class Row:
    label: str
    bars: list[Bar] = field(default_factory=list)
    indent: int = 0
    key: str = ""  # data-row attribute (the step name)


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _secs(a: datetime, b: datetime) -> str:
    s = (b - a).total_seconds()
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"


def gantt_rows(run: Run, now: datetime) -> list[Row]:
    rows: list[Row] = []
    head = Row("run", key="")
    run_start = run.started_at
    if run_start is not None and run_start > run.created_at:
        head.bars.append(Bar(run.created_at, run_start, "queued", f"queued {_secs(run.created_at, run_start)}"))
    if run_start is not None:
        end = run.ended_at or now
        state = run.status.value
        head.bars.append(Bar(run_start, end, f"run-{state}", f"run {state} {_secs(run_start, end)}"))
    rows.append(head)
    ready = run_start  # when the step before finished
    for step in run.steps:
        row = Row(step.name, key=step.name)
        attempts = _attempts(step, now)
        if attempts and ready is not None and attempts[0][0] > ready:
            first = attempts[0][0]
            row.bars.append(Bar(ready, first, "wait", f"waiting to start {_secs(ready, first)}"))
        for i, (start, end, outcome, number) in enumerate(attempts):
            if i > 0:
                gap_from = attempts[i - 1][1]
                if start > gap_from:
                    kind = "retry-wait" if attempts[i - 1][2] in ("failed", "retry") else "wait"
                    what = "retry backoff" if kind == "retry-wait" else "waiting (rerun)"
                    row.bars.append(Bar(gap_from, start, kind, f"{what} {_secs(gap_from, start)}"))
            row.bars.append(Bar(start, end, f"attempt-{outcome}", f"attempt {number} {outcome} {_secs(start, end)}"))
        if step.state.value == "retry_wait" and attempts:
            last_end = attempts[-1][1]
            if now > last_end:
                row.bars.append(Bar(last_end, now, "retry-wait", f"retry backoff {_secs(last_end, now)} so far"))
        if attempts and step.state.value == "succeeded":
            ready = attempts[-1][1]
        rows.append(row)
    return rows


def _attempts(step: Any, now: datetime) -> list[tuple[datetime, datetime, str, int]]:
    """(start, end, outcome, attempt number) of every attempt with a start, oldest first."""
    out: list[tuple[datetime, datetime, str, int]] = []
    seen: set[int] = set()
    for h in step.history:
        start, end = _parse(h.get("started_at")), _parse(h.get("ended_at"))
        if start is None:
            continue
        number = int(h.get("attempt") or 0)
        seen.add(number)
        outcome = str(h.get("outcome") or "ended")
        out.append((start, max(end or start, start), _word(outcome), number))
    if step.attempt and step.attempt not in seen and step.started_at is not None:
        end = step.ended_at or now
        out.append((step.started_at, max(end, step.started_at), _word(step.state.value), step.attempt))
    out.sort(key=lambda a: (a[0], a[3]))
    return out


def _word(text: str) -> str:
    return text if text.replace("_", "").isalnum() else "other"


def trace_rows(records: list[dict[str, Any]]) -> list[Row]:
    """Spans, oldest first, indented under their parent span; events are not drawn."""
    spans = [r for r in records if r.get("type") == "span" and _parse(r.get("ts")) is not None]
    by_id = {str(r.get("span_id")): r for r in spans if r.get("span_id")}

    def depth(rec: dict[str, Any]) -> int:
        d, parent, seen = 0, rec.get("parent_span_id"), set()
        while parent and str(parent) in by_id and parent not in seen and d < 20:
            seen.add(parent)
            d += 1
            parent = by_id[str(parent)].get("parent_span_id")
        return d

    rows: list[Row] = []
    for rec in sorted(spans, key=lambda r: str(r.get("ts")))[:MAX_TRACE_ROWS]:
        start = _parse(rec.get("ts"))
        assert start is not None
        ms = rec.get("duration_ms")
        ms = float(ms) if isinstance(ms, int | float) and math.isfinite(ms) and ms >= 0 else 0.0
        end = start + timedelta(milliseconds=ms)
        ok = rec.get("status") in (None, "ok")
        raw_attrs = rec.get("attributes")
        attrs: dict[str, Any] = raw_attrs if isinstance(raw_attrs, dict) else {}
        shown = ", ".join(f"{k}={clip(str(v), 60)}" for k, v in list(attrs.items())[:8])
        name = str(rec.get("name") or "span")
        title = f"{name} {ms:.1f}ms" + ("" if ok else f" {rec.get('status')}") + (f"\n{shown}" if shown else "")
        rows.append(Row(name, [Bar(start, end, "span" if ok else "span-error", title)], indent=depth(rec)))
    return rows


def timeline_svg(rows: list[Row], label: str, css_class: str) -> Markup:
    bars = [b for r in rows for b in r.bars]
    if not bars:
        return Markup("")
    t0 = min(b.start for b in bars)
    t1 = max(b.end for b in bars)
    span = max((t1 - t0).total_seconds(), 0.001)
    scale = CHART_W / span
    height = AXIS_H + len(rows) * ROW_H + 6

    def x(t: datetime) -> float:
        return LABEL_W + (t - t0).total_seconds() * scale

    parts = [_axis(span, scale, height)]
    for i, row in enumerate(rows):
        y = AXIS_H + i * ROW_H
        body = [
            el("text", {"class": "row-label", "x": 4.0 + 10 * min(row.indent, 8), "y": y + 16}, clip(row.label, 24)),
        ]
        for b in row.bars:
            left = x(b.start)
            w = max(x(b.end) - left, 2.0)
            body.append(
                el(
                    "rect",
                    {"class": f"bar {b.css}", "x": left, "y": y + (ROW_H - BAR_H) / 2, "width": w, "height": BAR_H},
                    el("title", None, b.title),
                )
            )
        parts.append(el("g", {"class": "row", "data-row": row.key or None}, *body))
    return svg(LABEL_W + CHART_W + 10, height, label, css_class, join(parts))


def _axis(span: float, scale: float, height: float) -> Markup:
    step = _nice_step(span / 6)
    ticks: list[Markup] = []
    t = 0.0
    while t <= span + 1e-9 and len(ticks) < 20:
        px = LABEL_W + t * scale
        ticks.append(el("line", {"class": "tick", "x1": px, "y1": AXIS_H - 6, "x2": px, "y2": height}))
        ticks.append(el("text", {"class": "tick-label", "x": px + 2, "y": AXIS_H - 10}, _fmt_offset(t)))
        t += step
    return el("g", {"class": "axis"}, *ticks)


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    base = 10**exp
    for m in (1, 2, 5, 10):
        if raw <= m * base:
            return float(m * base)
    return float(10 * base)


def _fmt_offset(seconds: float) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:.0f}ms" if seconds else "0"
    if seconds < 120:
        return f"+{num(seconds)}s"
    return f"+{seconds / 60:.1f}min"
