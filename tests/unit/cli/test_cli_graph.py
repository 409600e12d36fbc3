"""The CLI's DAG pictures: show's graph (needs, skipped steps, instance summaries), trace nesting
instance spans, and one progress figure per running fan-out while following."""

from __future__ import annotations

import io

from rich.console import Console

from shared.cli import RunFollower
from shared.cli_graph import fanout_progress, instance_trace_tree, is_plain_chain, print_graph
from shared.engine.model import FanOut
from tests.unit.engine.support import Harness, make_dag, make_flow, make_run

FLOW = make_dag(
    {"name": "etl"},
    {"name": "train", "for_each": list(range(20)), "max_parallel": 4},
    {"name": "quality", "needs": ["etl"], "if": "${steps.etl.outputs.result} == '[not] this'"},
    {"name": "notify", "needs": ["train", "quality"], "run_if": "always"},
)


def text_of(render: object, width: int = 200) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(render)
    return buf.getvalue()


def until_fanned_out(h: Harness, succeeded: int = 0) -> None:
    h.backend.polls = 2

    def done() -> bool:
        head = h.instances.fanouts("run1").get("train")
        return head is not None and head.counts.get("succeeded", 0) >= succeeded

    h.until(done)


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_show_renders_needs_skips_and_the_instance_summary() -> None:
    h = Harness(FLOW)
    h.create()
    h.drain()
    run = h.store.get("run1")
    head = h.instances.fanouts("run1")["train"]
    out, buf = console()
    print_graph(run, FLOW, {"train": head}, out)
    text = buf.getvalue()
    assert "train 20/20 succeeded (max_parallel 4)" in text
    assert "quality" in text and "skipped (its if was false)" in text
    assert "if ${steps.etl.outputs.result} == '[not] this'" in text  # shown as text, not as markup
    assert "train, quality" in text and "run_if always" in text


def test_a_running_fan_out_is_summarised_with_its_counts() -> None:
    h = Harness(FLOW)
    h.create()
    until_fanned_out(h)
    run = h.store.get("run1")
    head = FanOut(run_id="run1", step="train", epoch=1, total=20, next=20, counts={"succeeded": 18, "running": 2})
    out, buf = console()
    print_graph(run, FLOW, {"train": head}, out)
    assert "train 18/20 succeeded, 2 running" in buf.getvalue()


def test_plain_chains_add_no_graph() -> None:
    flow = make_flow()
    run = make_run(flow)
    assert is_plain_chain(run, flow)
    out, buf = console()
    print_graph(run, flow, {}, out)
    assert buf.getvalue() == ""


def test_trace_nests_each_instance_under_its_step() -> None:
    def rec(name: str, step: str | None, index: int | None = None, ts: str = "1") -> dict:
        attrs = {"step": step} if step else {}
        if index is not None:
            attrs["index"] = index
        return {"type": "span", "name": name, "span_id": f"{name}{step}{index}", "ts": ts, "attributes": attrs}

    records = [
        rec("run.started", None),
        rec("step.launch", "etl"),
        rec("step.launch", "train", 1, "2"),
        rec("step.poll", "train", 1, "3"),
        rec("step.launch", "train", 0, "2"),
    ]
    text = text_of(instance_trace_tree(records, "run r"))
    lines = [line.strip(" │├└─") for line in text.splitlines()]
    assert lines[0] == "run r"
    assert "step train  2 instances" in lines
    i0, i1 = lines.index("train[0]"), lines.index("train[1]")
    assert i0 < i1 and lines[i1 + 1].startswith("step.launch") and lines[i1 + 2].startswith("step.poll")


def test_follow_shows_one_progress_figure_per_running_fan_out() -> None:
    h = Harness(FLOW)
    h.create()
    until_fanned_out(h, succeeded=3)
    run = fanout_progress(h.instances)(h.store.get("run1"))
    head = h.instances.fanouts("run1")["train"]
    done = sum(head.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    assert run.step("train").progress == {"done": done, "total": 20}
    out, buf = console()
    with RunFollower(out) as follower:
        follower.update(run)
    assert f"train        running {done}/20" in buf.getvalue()
