"""Graph layout, the Gantt and waterfall rows, the metric plot: pure functions, escaped SVG."""

from __future__ import annotations

from html.parser import HTMLParser

from shared.console.base import GraphNode, Instance, instance_summary
from shared.console.graph import chain_graph, columns, graph_svg
from shared.console.plot import Point, metric_plot
from shared.console.timeline import gantt_rows, timeline_svg, trace_rows
from shared.engine.model import StepState
from tests.unit.console.support import NOW, at, failed_run, running_run


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(markup: str) -> list[tuple[str, dict[str, str | None]]]:
    p = Tags()
    p.feed(markup)
    return p.tags


def test_chain_graph_each_step_needs_the_one_before() -> None:
    nodes = chain_graph(failed_run())
    assert [(n.id, n.needs, n.state) for n in nodes] == [("work", (), "succeeded"), ("score", ("work",), "failed")]
    assert nodes[1].detail == "attempt 2"
    assert "3/8 done" in chain_graph(running_run())[0].detail


def test_dag_columns_follow_the_longest_chain_of_needs() -> None:
    n = [
        GraphNode("a", "a", "succeeded"),
        GraphNode("b", "b", "running", ("a",)),
        GraphNode("c", "c", "pending", ("a",)),
        GraphNode("d", "d", "pending", ("b", "c")),
        GraphNode("e", "e", "pending", ("a", "d")),
    ]
    assert columns(n) == {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (2, 0), "e": (3, 0)}


def test_cycles_and_unknown_needs_do_not_loop_or_fail() -> None:
    n = [
        GraphNode("a", "a", "pending", ("c", "ghost")),
        GraphNode("b", "b", "pending", ("a",)),
        GraphNode("c", "c", "pending", ("b",)),
        GraphNode("s", "s", "pending", ("s",)),
    ]
    placed = columns(n)
    assert set(placed) == {"a", "b", "c", "s"}
    assert str(graph_svg(n)).count('class="node') == 4


def test_graph_svg_draws_nodes_by_state_and_edges() -> None:
    out = str(graph_svg(chain_graph(failed_run())))
    found = tags(out)
    nodes = [a for t, a in found if t == "g" and "node" in (a.get("class") or "")]
    assert [(a["data-node"], a["class"]) for a in nodes] == [
        ("work", "node state-succeeded"),
        ("score", "node state-failed"),
    ]
    assert sum(1 for t, a in found if t == "path" and a.get("class") == "edge") == 1


def test_graph_escapes_labels_and_odd_states() -> None:
    out = str(graph_svg([GraphNode('<script>x</script>"', '<script>x</script>"', 'x" onload="y')]))
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert 'onload="y' not in out
    assert "state-other" in out


def test_fanout_summary_counts_states() -> None:
    inst = [Instance(f"t{i}", "succeeded") for i in range(18)] + [Instance("a", "running"), Instance("b", "running")]
    assert instance_summary(inst) == "18/20 succeeded, 2 running"
    mixed = [Instance("a", "failed"), Instance("b", "succeeded"), Instance("c", "retry_wait")]
    assert instance_summary(mixed) == "1/3 succeeded, 1 retry wait, 1 failed"
    assert GraphNode("n", "n", "running", instances=tuple(inst)).summary.startswith("18/20")
    assert "18/20 succeeded, 2 running" in str(graph_svg([GraphNode("n", "n", "running", instances=tuple(inst))]))


def test_gantt_rows_show_queueing_attempts_and_retry_waits() -> None:
    rows = gantt_rows(failed_run(), NOW)
    head = rows[0]
    assert [b.css for b in head.bars] == ["queued", "run-failed"]
    assert (head.bars[0].start, head.bars[0].end) == (at(0), at(1))
    work, score = rows[1], rows[2]
    assert [b.css for b in work.bars] == ["wait", "attempt-succeeded"]  # started 1s after the run
    assert [b.css for b in score.bars] == ["wait", "attempt-failed", "retry-wait", "attempt-failed"]
    wait = score.bars[2]
    assert (wait.start, wait.end) == (at(15), at(20)) and "retry backoff 5.0s" in wait.title


def test_gantt_running_attempt_ends_now_and_a_step_waiting_to_retry_shows_it() -> None:
    run = running_run()
    rows = gantt_rows(run, at(160))
    assert [b.css for b in rows[1].bars] == ["attempt-running"] and rows[1].bars[0].end == at(160)
    assert rows[2].bars == []  # not reached yet
    step = run.steps[0]
    step.state = StepState.RETRY_WAIT
    step.ended_at = at(130)
    step.history = [
        {"attempt": 1, "outcome": "failed", "started_at": at(101).isoformat(), "ended_at": at(130).isoformat()}
    ]
    bars = gantt_rows(run, at(160))[1].bars
    assert [b.css for b in bars] == ["attempt-failed", "retry-wait"] and bars[1].end == at(160)


def test_timeline_svg_escapes_and_keeps_rows_in_order() -> None:
    run = failed_run()
    run.steps[1].name = "<x>"
    out = str(timeline_svg(gantt_rows(run, NOW), "t", "gantt"))
    assert "<x>" not in out and "&lt;x&gt;" in out
    rows = [a.get("data-row") for t, a in tags(out) if t == "g" and a.get("class") == "row"]
    assert rows == [None, "work", "<x>"]
    assert str(timeline_svg([], "t", "gantt")) == ""


def test_trace_rows_indent_spans_under_their_parents() -> None:
    def span(name: str, sid: str, parent: str | None, ts: float, ms: float, status: str = "ok") -> dict:
        return {
            "type": "span",
            "name": name,
            "span_id": sid,
            "parent_span_id": parent,
            "ts": at(ts).isoformat(),
            "duration_ms": ms,
            "status": status,
            "attributes": {"step": "<b>s</b>"},
        }

    records = [
        span("child", "2", "1", 1.0, 200),
        span("root", "1", None, 0.5, 1500),
        span("grandchild", "3", "2", 1.1, 50, "error"),
        {"type": "event", "name": "e", "ts": at(1).isoformat()},
    ]
    rows = trace_rows(records)
    assert [(r.label, r.indent) for r in rows] == [("root", 0), ("child", 1), ("grandchild", 2)]
    assert rows[2].bars[0].css == "span-error"
    assert rows[0].bars[0].end == at(2.0)
    out = str(timeline_svg(rows, "trace", "waterfall"))
    assert "&lt;b&gt;s&lt;/b&gt;" in out and "<b>" not in out


def test_metric_plot_marks_champion_and_decisions() -> None:
    pts = [
        Point("1", 0.6, "promoted", "previous"),
        Point("2", 0.5, "rejected"),
        Point("3", 0.7, "promoted", "champion"),
    ]
    out = str(metric_plot(pts, "r2"))
    points = [a for t, a in tags(out) if t == "g"]
    assert [a["class"] for a in points] == ["point promoted previous", "point rejected", "point promoted champion"]
    assert ">champion<" in out and ">previous<" in out and "polyline" in out
    assert str(metric_plot([], "r2")) == ""
    single = str(metric_plot([Point("1", 0.5)], "<m>"))
    assert "&lt;m&gt;" in single and "<m>" not in single
