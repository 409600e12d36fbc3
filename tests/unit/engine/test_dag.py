"""DAG runs through the executor and the in-memory ports: branches run side by side, fan-outs
respect max_parallel and join once, conditions skip, failures follow run_if and on_failure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.backends.base import LaunchRequest, LaunchResult, StepStatus
from shared.engine import control
from shared.engine.model import InstanceRun, Run, RunStatus, StepState, idempotency_key
from shared.errors import ValidationError
from tests.fakes import ScriptedBackend
from tests.unit.engine.support import Harness, make_dag


def overlap(a: Any, b: Any) -> bool:
    return a.started_at < b.ended_at and b.started_at < a.ended_at


def instances(h: Harness, run_id: str, step: str) -> list[InstanceRun]:
    run = h.store.get(run_id)
    epoch = run.step(step).fanout.epoch  # type: ignore[union-attr]
    return h.instances.instances(run_id, step, epoch, limit=100_000)


@dataclass
class Recording(ScriptedBackend):
    """Records, at each new job, how many instances of each step are active (launching/running)."""

    harness: Any = None
    peak: dict[str, int] = field(default_factory=dict)
    requests: list[LaunchRequest] = field(default_factory=list)

    def launch(self, request: LaunchRequest) -> LaunchResult:
        if request.key not in self.jobs:
            self.requests.append(request)
        result = super().launch(request)
        self._measure(request.run_id)
        return result

    def _measure(self, run_id: str) -> None:
        h = self.harness
        for step, head in h.instances.fanouts(run_id).items():
            rows = h.instances.instances(run_id, step, head.epoch, limit=100_000)
            active = sum(1 for r in rows if r.state.active)
            assert active == head.active, "the FanOut row's counts agree with the rows"
            self.peak[step] = max(self.peak.get(step, 0), active)


def harness(flow: Any, **backend: Any) -> Harness:
    rec = Recording(**backend)
    h = Harness(flow, backend=rec)
    rec.harness = h
    return h


# ---------------------------------------------------------------- branches


def test_diamond_runs_b_and_c_at_the_same_time_and_d_once() -> None:
    flow = make_dag(
        {"name": "a"},
        {"name": "b", "needs": ["a"]},
        {"name": "c", "needs": ["a"]},
        {"name": "d", "needs": ["b", "c"]},
    )
    h = harness(flow, polls=2)
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED, run.error
    a, b, c, d = run.steps
    assert overlap(b, c), (b.started_at, b.ended_at, c.started_at, c.ended_at)
    assert a.ended_at <= b.started_at and a.ended_at <= c.started_at  # type: ignore[operator]
    assert max(b.ended_at, c.ended_at) <= d.started_at  # type: ignore[type-var,operator]
    assert h.backend.launches_per_step() == {"a": 1, "b": 1, "c": 1, "d": 1}
    # b and c are launched by the same decision, before either is polled
    keys = h.backend.launches
    assert keys.index("run1-b-1") < keys.index("run1-d-1") and keys.index("run1-c-1") < keys.index("run1-d-1")


def test_chain_without_needs_launches_exactly_as_before() -> None:
    flow = make_dag({"name": "x"}, {"name": "y"}, {"name": "z"})
    h = harness(flow)
    h.create()
    h.drain()
    assert h.backend.launches == ["run1-x-1", "run1-y-1", "run1-z-1"]
    run = h.store.get("run1")
    assert "fanout" not in run.model_dump_json() and "skip" not in run.model_dump_json()


# ---------------------------------------------------------------- fan-out / fan-in


def fan_flow(items: Any, *, max_parallel: int | None = None, **policies: Any) -> Any:
    train: dict[str, Any] = {
        "name": "train",
        "needs": [],
        "for_each": items,
        "params": {"python_file": "train.py", "parameters": ["${item}", "${index}"]},
    }
    if max_parallel is not None:
        train["max_parallel"] = max_parallel
    return make_dag(
        train,
        {
            "name": "join",
            "needs": ["train"],
            "params": {"python_file": "join.py", "parameters": ["${steps.train.outputs}"]},
        },
        policies=policies or None,
    )


def test_fifty_items_with_max_parallel_five_never_run_more_than_five() -> None:
    h = harness(fan_flow([f"p{i}" for i in range(50)], max_parallel=5), polls=1)
    h.create()
    h.drain(max_rounds=5000)
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert h.backend.peak["train"] == 5
    rows = instances(h, "run1", "train")
    assert [r.index for r in rows] == list(range(50)) and all(r.state is StepState.SUCCEEDED for r in rows)
    assert sorted(r.key for r in rows) == sorted(idempotency_key("run1", "train", 1, i) for i in range(50))
    # every instance launched once, with its own item; the fan-in step once, after all of them
    train_requests = [r for r in h.backend.requests if r.step == "train"]
    assert sorted((r.index, r.item, r.params["parameters"][0]) for r in train_requests) == sorted(
        (i, f"p{i}", f"p{i}") for i in range(50)
    )
    join = [r for r in h.backend.requests if r.step == "join"]
    assert len(join) == 1
    outputs = json.loads(join[0].params["parameters"][0])  # one argument: the outputs list as JSON
    assert [o["item"] for o in outputs] == [f"p{i}" for i in range(50)]  # in item order
    train = run.step("train")
    assert (
        train.fanout is not None
        and train.fanout.counts == {"succeeded": 50}
        and train.progress
        == {
            "done": 50,
            "total": 50,
        }
    )
    assert max(r.ended_at for r in rows) <= run.step("join").started_at  # type: ignore[type-var,operator]


def test_run_document_size_does_not_grow_with_the_items() -> None:
    sizes = []
    for n in (3, 120):
        h = harness(fan_flow(list(range(n))))
        h.create()
        h.drain(max_rounds=10_000)
        run = h.store.get("run1")
        assert run.status is RunStatus.SUCCEEDED
        sizes.append(len(re.sub(r"\d", "", run.model_dump_json())))  # times and counts aside
    assert sizes[0] == sizes[1]


def test_empty_for_each_succeeds_with_zero_instances() -> None:
    h = harness(fan_flow([]))
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.step("train").state is StepState.SUCCEEDED and run.step("train").fanout.total == 0  # type: ignore[union-attr]
    assert [r.step for r in h.backend.requests] == ["join"] and h.backend.requests[0].params["parameters"] == ["[]"]


def test_more_items_than_max_items_fails_the_step_clearly() -> None:
    h = harness(fan_flow(list(range(6)), max_items=5))
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED
    assert run.step("train").error == "for_each gives 6 items, more than policies.max_items (5)"
    assert run.step("join").state is StepState.PENDING and h.backend.requests == []  # fail_fast: never reached


def test_an_item_too_large_to_store_fails_the_step_clearly() -> None:
    h = harness(fan_flow(["small", "x" * 9000]))
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED and h.backend.requests == []
    assert run.step("train").error == (
        "for_each item 1 is 9002 characters of JSON, more than 8000: keep large data in blobs and pass its URL"
    )


def test_for_each_that_is_not_a_list_fails_the_step() -> None:
    flow = make_dag({"name": "etl"}, {"name": "train", "for_each": "${steps.etl.outputs.result}"})
    h = harness(flow)
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert (
        run.step("train").state is StepState.FAILED
        and run.step("train").error == "for_each must give a list, got a str"
    )


def test_for_each_over_an_upstream_output_and_over_a_fan_out_s_outputs() -> None:
    flow = make_dag(
        {"name": "etl"},
        {
            "name": "train",
            "for_each": "${steps.etl.outputs.parts}",
            "params": {"python_file": "t.py", "parameters": ["${item.p}"]},
        },
        {
            "name": "register",
            "for_each": "${steps.train.outputs}",
            "max_parallel": 2,
            "params": {"python_file": "r.py", "parameters": ["${item.result}", "${item.item.p}"]},
        },
    )
    h = harness(flow)
    h.backend.outcomes[("etl", 1)] = StepStatus(
        "succeeded", outputs={"parts": [{"p": "north"}, {"p": "south"}, {"p": "east"}]}
    )
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED, run.error
    regs = sorted((r.index, r.params["parameters"]) for r in h.backend.requests if r.step == "register")
    assert regs == [(0, ["train[0]-1", "north"]), (1, ["train[1]-1", "south"]), (2, ["train[2]-1", "east"])]
    assert all(
        r.key == idempotency_key("run1", "register", 1, r.index) for r in h.backend.requests if r.step == "register"
    )


def test_a_failed_instance_retries_under_its_own_key() -> None:
    flow = fan_flow(["a", "b", "c"])
    flow = make_dag(
        {"name": "train", "needs": [], "for_each": ["a", "b", "c"], "retries": {"count": 1, "backoff_seconds": 1}},
        {"name": "join"},
    )
    h = harness(flow)
    h.backend.instance_outcomes[("train", 1, 1)] = StepStatus("failed", error="flaky", retryable=True)
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED
    keys = [r.key for r in h.backend.requests if r.step == "train"]
    assert sorted(keys) == sorted(["run1-train_0-1", "run1-train_1-1", "run1-train_1-2", "run1-train_2-1"])
    second = h.instances.instance("run1", "train", 1, 1)
    assert (
        second is not None and second.attempt == 2 and [x["outcome"] for x in second.history] == ["failed", "succeeded"]
    )


# ---------------------------------------------------------------- conditions and failures


def test_false_if_skips_and_counts_as_done() -> None:
    flow = make_dag(
        {"name": "a"},
        {"name": "b", "if": "${steps.a.outputs.result} == 'nope'"},
        {"name": "c", "if": "${run.trigger_kind} == 'manual' and ${trigger.params.n} >= 3"},
    )
    h = harness(flow)
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED
    assert run.step("b").state is StepState.SKIPPED and run.step("b").skip == "condition"
    assert run.step("c").state is StepState.SUCCEEDED
    assert h.backend.launches_per_step() == {"a": 1, "c": 1}


def failing_flow(on_failure: str) -> Any:
    return make_dag(
        {"name": "a"},
        {"name": "bad", "needs": ["a"]},
        {"name": "slow", "needs": ["a"]},
        {"name": "after_bad", "needs": ["bad"]},
        {"name": "after_slow", "needs": ["slow"]},
        {"name": "cleanup", "needs": ["after_bad", "after_slow"], "run_if": "always"},
        {"name": "alarm", "needs": ["bad"], "run_if": "any_failed"},
        {"name": "quiet", "needs": ["slow"], "run_if": "any_failed"},
        policies={"on_failure": on_failure},
    )


def test_continue_lets_independent_branches_finish() -> None:
    h = harness(failing_flow("continue"), polls=1)
    h.backend.outcomes[("bad", 1)] = StepStatus("failed", error="boom")
    h.backend.outcomes[("slow", 1)] = StepStatus("succeeded", outputs={"v": 1})
    h.create()
    h.drain()
    run = h.store.get("run1")
    states = {s.name: (s.state.value, s.skip) for s in run.steps}
    assert states == {
        "a": ("succeeded", None),
        "bad": ("failed", None),
        "slow": ("succeeded", None),
        "after_bad": ("skipped", "upstream"),
        "after_slow": ("succeeded", None),
        "cleanup": ("succeeded", None),
        "alarm": ("succeeded", None),
        "quiet": ("skipped", "no_failure"),
    }
    assert run.status is RunStatus.FAILED and run.error == "step bad failed: boom"
    assert "after_bad" not in h.backend.launches_per_step()


def test_fail_fast_cancels_running_siblings_and_starts_only_handlers() -> None:
    h = harness(failing_flow("fail_fast"), polls=3)
    h.backend.instance_outcomes.clear()
    h.backend.outcomes[("bad", 1)] = StepStatus("failed", error="boom")
    h.backend.polls = 1
    h.create()
    # slow stays running until bad fails: it polls 5 times
    orig = h.backend.launch

    def launch(request: LaunchRequest) -> LaunchResult:
        result = orig(request)
        if request.step == "slow":
            h.backend.jobs[request.key].polls_left = 5
        return result

    h.backend.launch = launch  # type: ignore[method-assign]
    h.drain()
    run = h.store.get("run1")
    states = {s.name: (s.state.value, s.skip) for s in run.steps}
    assert states["slow"] == ("cancelled", None) and "fail_fast" in (run.step("slow").error or "")
    assert h.backend.jobs["run1-slow-1"].cancelled
    assert states["after_bad"] == ("pending", None) and states["after_slow"] == ("pending", None)  # never reached
    assert states["cleanup"] == ("succeeded", None) and states["alarm"] == ("succeeded", None)
    assert states["quiet"] == ("succeeded", None)  # slow was cancelled: a failure for any_failed
    assert run.status is RunStatus.FAILED and run.error == "step bad failed: boom"


def test_fail_fast_in_a_fan_out_cancels_the_other_instances() -> None:
    flow = fan_flow(list(range(8)), max_parallel=4)
    h = harness(flow, polls=4)
    h.backend.instance_outcomes[("train", 0, 1)] = StepStatus("failed", error="bad partition")
    h.create()
    orig = h.backend.poll

    def poll(remote_id: str) -> StepStatus:
        job = h.backend.jobs[remote_id]
        if job.request.index == 0:
            job.polls_left = 0  # the failing one fails at its first poll
        return orig(remote_id)

    h.backend.poll = poll  # type: ignore[method-assign]
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED
    assert run.step("train").state is StepState.FAILED and "[0] bad partition" in (run.step("train").error or "")
    rows = instances(h, "run1", "train")
    assert len(rows) == 4  # the other 4 never began
    assert {r.index: r.state.value for r in rows} == {0: "failed", 1: "cancelled", 2: "cancelled", 3: "cancelled"}
    assert sorted(h.backend.cancelled) == [idempotency_key("run1", "train", 1, i) for i in (1, 2, 3)]
    head = h.instances.fanouts("run1")["train"]
    assert head.active == 0 and head.stopping == "failed"


def test_continue_in_a_fan_out_finishes_the_others_then_fails_the_step() -> None:
    h = harness(fan_flow(list(range(5)), max_parallel=2, on_failure="continue"))
    h.backend.instance_outcomes[("train", 3, 1)] = StepStatus("failed", error="bad")
    h.create()
    h.drain()
    run = h.store.get("run1")
    train = run.step("train")
    assert train.state is StepState.FAILED and train.fanout.counts == {"succeeded": 4, "failed": 1}  # type: ignore[union-attr]
    assert train.error == "1 of 5 instances failed; first: [3] bad"
    assert run.step("join").state is StepState.SKIPPED and run.status is RunStatus.FAILED


# ---------------------------------------------------------------- cancel and rerun


def test_cancel_stops_every_running_branch_and_instance() -> None:
    flow = make_dag(
        {"name": "train", "needs": [], "for_each": list(range(6)), "max_parallel": 3},
        {"name": "side", "needs": []},
        {"name": "end", "needs": ["train", "side"]},
    )
    h = harness(flow, polls=50)
    h.create()
    for _ in range(12):  # start everything, then cancel mid-flight
        h.deliver_one()
    control.request_cancel(h.store, h.queue, "run1")
    h.drain(max_rounds=2000)
    run = h.store.get("run1")
    assert run.status is RunStatus.CANCELLED
    assert run.step("side").state is StepState.CANCELLED and h.backend.jobs["run1-side-1"].cancelled
    rows = instances(h, "run1", "train")
    assert len(rows) == 3 and all(r.state is StepState.CANCELLED for r in rows)
    assert sorted(h.backend.cancelled) == sorted(["run1-side-1", *(f"run1-train_{i}-1" for i in range(3))])
    assert h.instances.fanouts("run1")["train"].active == 0


def test_rerun_from_a_step_resets_it_and_its_descendants_only() -> None:
    flow = make_dag(
        {"name": "a"},
        {"name": "b", "needs": ["a"], "for_each": ["x", "y"]},
        {"name": "c", "needs": ["a"]},
        {"name": "d", "needs": ["b"]},
    )
    h = harness(flow)
    h.backend.outcomes[("d", 1)] = StepStatus("failed", error="oops")
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED
    c_before = run.step("c").model_dump()
    control.request_rerun(h.store, h.queue, h.executor.flows, "run1", "b")
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED and run.reruns == 1
    assert run.step("c").model_dump() == c_before  # not a descendant: untouched, outputs kept
    assert run.step("b").fanout.epoch == 2  # type: ignore[union-attr]
    keys = sorted(r.key for r in h.backend.requests if r.step == "b")
    # new keys for the new epoch: attempts continue after the first epoch's
    assert keys == ["run1-b_0-1", "run1-b_0-2", "run1-b_1-1", "run1-b_1-2"]
    assert h.backend.launches_per_step() == {"a": 1, "b": 4, "c": 1, "d": 2}


def test_rerun_refuses_a_step_whose_upstream_did_not_succeed() -> None:
    flow = make_dag({"name": "a"}, {"name": "b", "needs": ["a"]}, {"name": "c", "needs": []})
    h = harness(flow)
    h.backend.outcomes[("a", 1)] = StepStatus("failed", error="x")
    h.create()
    h.drain()
    with pytest.raises(ValidationError) as info:
        control.request_rerun(h.store, h.queue, h.executor.flows, "run1", "b")
    assert info.value.field == "from_step" and "'a'" in info.value.message
    # a step with no failed ancestor may be rerun even though it comes after one in the file
    run: Run = h.store.get("run1")
    assert run.step("c").state is StepState.CANCELLED  # running when a failed (fail_fast)
    control.request_rerun(h.store, h.queue, h.executor.flows, "run1", "c")
    h.drain()
    run = h.store.get("run1")
    assert run.step("c").state is StepState.SUCCEEDED and run.step("a").state is StepState.FAILED
    assert run.status is RunStatus.FAILED  # a still failed


def test_each_instance_has_its_own_timeout() -> None:
    flow = make_dag(
        {"name": "train", "needs": [], "for_each": ["a", "b"], "timeout_seconds": 5, "retries": {"count": 1}},
        policies={"on_failure": "continue"},
    )
    h = harness(flow, polls=1)
    h.backend.instance_outcomes[("train", 1, 1)] = StepStatus("running")  # never finishes (and polls again)
    h.backend.instance_outcomes[("train", 1, 2)] = StepStatus("running")
    h.create()
    h.drain(max_rounds=3000)
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED
    rows = {r.index: r for r in instances(h, "run1", "train")}
    assert rows[0].state is StepState.SUCCEEDED
    assert rows[1].state is StepState.FAILED and rows[1].attempt == 2 and rows[1].error == "timed out after 5s"
    assert sorted(h.backend.cancelled) == ["run1-train_1-1", "run1-train_1-2"]  # each timed-out job is cancelled


def test_a_fan_out_is_nudged_by_its_instances_deadlines_not_by_the_idle_bound() -> None:
    """A run with only a fan-out active has no deadline of its own: the sweep reads its active
    instances' deadlines. Instances ticking on time keep it alone however long ago the run
    document was saved; an instance whose tick was lost is nudged once its deadline + grace pass,
    not after the 900 s idle bound."""
    h = harness(fan_flow(["p0", "p1", "p2"]), polls=100_000)
    h.create()
    h.until(lambda: len(h.backend.requests) == 3)
    saved = h.store.get("run1")
    assert saved.due_at is None  # only the fan-out is active
    h.until(lambda: h.queue.now > 1200, max_rounds=100_000)  # instances tick; the run is not saved
    assert (h.now() - h.store.get("run1").updated_at).total_seconds() > 900
    assert h.executor.resume_stalled(grace_seconds=35, idle_seconds=900) == []
    h.queue.items.clear()  # every pending tick is lost for good
    rows = instances(h, "run1", "train")
    due = min(r.due_at for r in rows if r.due_at is not None)
    h.queue.advance(max(0.0, (due - h.now()).total_seconds()) + 35)
    assert h.executor.resume_stalled(grace_seconds=35, idle_seconds=900) == []  # it may still come back
    h.queue.advance(1)
    assert h.executor.resume_stalled(grace_seconds=35, idle_seconds=900) == ["run1"]
    assert len(h.queue.items) == 3  # the lost ticks were re-issued, one per instance
    rows = instances(h, "run1", "train")
    assert all(r.due_at is not None and r.due_at >= h.now() for r in rows)  # their new deadlines saved
    assert all(r.stalled_seconds > 35 for r in rows)  # the wait for the lost ticks is not the instances'
    assert h.executor.resume_stalled(grace_seconds=35, idle_seconds=900) == []  # so the next sweep leaves it
