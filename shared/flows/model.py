"""The flows.yaml model.

A file holds ``flows: {name: Flow}``. A flow has triggers, its steps, policies and (for
flows that train) the model it ships and the metric the gate compares. Steps form a graph
through ``needs`` (default: the step written before, so a plain list is a chain; see
shared.flows.dag); a step may fan out ``for_each`` item of a list (``max_parallel`` at a
time), run only ``if`` a condition holds (shared.flows.expr) and choose when it runs after
failures (``run_if``). Step ``params`` are templated at launch time from ``${trigger.*}``,
``${steps.<name>.outputs.*}`` and, in a for_each step, ``${item}`` and ``${index}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from shared.flows.dag import Graph

NAME_RE = r"^[a-z][a-z0-9_-]{0,62}$"
EVENT_TYPES = ("git.push", "build.complete", "ms.vss-release.deployment-completed-event")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- triggers


class BlobTrigger(_Strict):
    kind: Literal["blob"] = "blob"
    container: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")]
    prefix: str = ""
    suffix: str = ""
    ignore_empty: bool = True
    settle_seconds: Annotated[int, Field(ge=0, le=86400)] = 0
    manifest: str | None = Field(
        default=None,
        description=("Blob name, relative to the dropped blob's folder, whose arrival starts the run, e.g. _SUCCESS"),
    )

    def matches(self, container: str, name: str) -> bool:
        return container == self.container and name.startswith(self.prefix) and name.endswith(self.suffix)


class ScheduleTrigger(_Strict):
    kind: Literal["schedule"] = "schedule"
    cron: str = Field(
        description="NCRONTAB as Azure Functions reads it: 6 fields {second} {minute} {hour} {day} {month} "
        "{day-of-week}, or 5 without {second} (fires at second 0)"
    )
    timezone: str = "UTC"
    catch_up: bool = False
    max_catch_up: Annotated[int, Field(ge=1, le=1000)] = 24

    @field_validator("cron")
    @classmethod
    def _ncrontab(cls, v: str) -> str:
        from shared.flows.cron import Cron

        Cron.parse(v)  # ValueError names the field (and the count when it is not 5 or 6)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from shared.flows.cron import zone

        zone(v)  # a short ValueError for a name that is not an IANA time zone
        return v


class AzureDevOpsTrigger(_Strict):
    kind: Literal["azure_devops"] = "azure_devops"
    events: list[Literal["git.push", "build.complete", "ms.vss-release.deployment-completed-event"]] = Field(
        min_length=1
    )
    repository: str | None = None
    branch: str | None = Field(default=None, description="Branch name without refs/heads/, e.g. main")
    result: str | None = Field(default=None, description="build/deployment result to match, e.g. succeeded")


class ManualTrigger(_Strict):
    kind: Literal["manual"] = "manual"


Trigger = Annotated[BlobTrigger | ScheduleTrigger | AzureDevOpsTrigger | ManualTrigger, Field(discriminator="kind")]


# ---------------------------------------------------------------- steps


class Retries(_Strict):
    count: Annotated[int, Field(ge=0, le=20)] = 0
    backoff_seconds: Annotated[float, Field(ge=0)] = 5.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    max_backoff_seconds: Annotated[float, Field(ge=0)] = 300.0
    on: Literal["retryable", "any"] = Field(
        default="retryable", description="retry only retryable errors (default) or any failure"
    )

    def delay(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` (attempt counts from 1)."""
        return float(min(self.max_backoff_seconds, self.backoff_seconds * self.multiplier ** max(0, attempt - 1)))


class Poll(_Strict):
    initial_seconds: Annotated[float, Field(gt=0)] = 2.0
    multiplier: Annotated[float, Field(ge=1)] = 1.5
    max_seconds: Annotated[float, Field(gt=0)] = 60.0

    def delay(self, polls_done: int) -> float:
        return float(min(self.max_seconds, self.initial_seconds * self.multiplier**polls_done))


class BatchParams(_Strict):
    command: str | list[str] = Field(
        description="The task's program and arguments, run without a shell: a list of words, or a string "
        "split into words like a shell does (quotes group). {input} {input_name} {input_blob} {input_url} "
        "{output_dir} {task_index} {task_id} and ${...} each fill one word (or part of one), never split "
        "or parsed; do not quote them. For shell features run a shell: [sh, -c, 'cmd \"$1\"', sh, '{input}']"
    )
    inputs: str | list[str] = Field(
        description="One task per input: a blob URL, a list of them, or 'container/prefix' to list"
    )
    resource_files: list[str] = Field(
        default_factory=list,
        description="Files put into every task's directory: blob URLs, container/name in the storage account, "
        "or ./path of a project file (the host uploads it)",
    )
    output_container: str = "outputs"
    max_task_retries: Annotated[int, Field(ge=0, le=10)] = 0
    max_wall_clock_seconds: Annotated[int, Field(gt=0)] | None = None
    pool: str | None = Field(default=None, description="Azure Batch pool id (azure mode)")

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | list[str]) -> str | list[str]:
        from shared.flows.argv import command_problems

        problems = command_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


class DatabricksParams(_Strict):
    job_id: int | None = Field(default=None, description="Existing job to run_now (azure mode)")
    python_file: str | None = Field(
        default=None, description="Python entry for a one-time run; locally a path relative to the project"
    )
    parameters: list[str] = Field(default_factory=list)
    cluster: dict[str, Any] | None = Field(default=None, description="new_cluster spec for a one-time run")

    @model_validator(mode="after")
    def _one(self) -> DatabricksParams:
        if self.job_id is None and not self.python_file:
            raise ValueError("set job_id (an existing job) or python_file (a one-time run)")
        return self


class AzureMLParams(_Strict):
    pipeline: str | None = Field(
        default=None, description="Pipeline YAML (v2 job file; locally a list of step scripts)"
    )
    published_pipeline_id: str | None = Field(default=None, description="v1 published pipeline (azureml-core)")
    experiment: str = "conveyor"
    inputs: dict[str, str] = Field(default_factory=dict)
    compute: str | None = None

    @model_validator(mode="after")
    def _one(self) -> AzureMLParams:
        if not self.pipeline and not self.published_pipeline_id:
            raise ValueError("set pipeline (a pipeline YAML) or published_pipeline_id (v1)")
        return self


class RegisterParams(_Strict):
    model_uri: str = Field(description="Where the model is, usually ${steps.<train>.outputs.model_uri}")
    model_name: str | None = Field(default=None, description="Defaults to the flow's model.name")
    metrics: dict[str, str | float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    partition: str | None = Field(
        default=None,
        description="The partition this model is for (many models, e.g. ${item.inputs.partition}): "
        "tagged conveyor.partition on the version and in the outputs",
    )


class DeployParams(_Strict):
    model_name: str | None = None
    version: str = Field(default="${steps.register.outputs.version}")
    endpoint: str | None = Field(default=None, description="Endpoint name; defaults to the flow's name")
    partition: str | None = Field(
        default=None,
        description="Serve the model as this partition of a routed endpoint (many models): the gate "
        "compares it with its own champion, and the endpoint routes each request by partition_key",
    )
    partition_key: str | None = Field(
        default=None,
        description="With partition: the column (or params.partition of a request) that routes rows to "
        "partitions, e.g. store; the same for every partition of one endpoint",
    )


RUN_IF = ("all_succeeded", "always", "any_failed")
_LONE_REF = re.compile(r"^\s*\$\{[^}]*\}\s*$")


class _StepBase(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=NAME_RE)]
    retries: Retries = Field(default_factory=Retries)
    timeout_seconds: Annotated[float, Field(gt=0)] = 3600.0
    poll: Poll = Field(default_factory=Poll)
    needs: list[Annotated[str, Field(pattern=NAME_RE)]] | None = Field(
        default=None,
        description="Steps this one waits for (default: the step written before it; [] for none)",
    )
    for_each: str | list[Any] | None = Field(
        default=None,
        description="Run one instance per item of this list: a ${...} reference to a list "
        "(e.g. ${steps.etl.outputs.result.partitions}) or a literal list; params see ${item} and ${index}",
    )
    max_parallel: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="Instances of this for_each step running at once (default: all)"
    )
    if_: str | bool | None = Field(
        default=None,
        alias="if",
        description='Run only when this is true, e.g. "${steps.quality.outputs.bad_rows} == 0"; '
        "otherwise the step is skipped (and counts as done for the steps after it)",
    )
    run_if: Literal["all_succeeded", "always", "any_failed"] = Field(
        default="all_succeeded",
        description="all_succeeded: skip when a step it needs failed or was cancelled; "
        "always: run once its needs are done; any_failed: run only when one of them failed",
    )

    @field_validator("for_each")
    @classmethod
    def _one_list(cls, v: str | list[Any] | None) -> str | list[Any] | None:
        if isinstance(v, str) and not _LONE_REF.match(v):
            raise ValueError("must be one ${...} reference to a list (or a YAML list)")
        return v

    @field_validator("if_")
    @classmethod
    def _parse_if(cls, v: str | bool | None) -> str | bool | None:
        from shared.flows.expr import ExprError, parse

        if isinstance(v, str):
            try:
                parse(v)
            except ExprError as exc:
                raise ValueError(f"bad expression: {exc}") from None
        return v

    def condition(self) -> Any:
        """The parsed ``if`` (an expr AST; parsed and cached when the file was loaded), or None."""
        from shared.flows.expr import Literal as Constant
        from shared.flows.expr import parse

        if self.if_ is None:
            return None
        return Constant(self.if_) if isinstance(self.if_, bool) else parse(self.if_)


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
RESERVED_ENV_PREFIX = "CONVEYOR_"
MAX_ENV_VARS = 100


class _ProcessStep(_StepBase):
    """A step whose work runs as processes: it may declare their environment."""

    env: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], str] = Field(
        default_factory=dict,
        description="Environment variables of the step's processes (values may use ${...}, each filling part "
        "of the one value). Tasks never see the host's settings: only PATH, HOME, the locale, TZ, TMPDIR, "
        "the task's own CONVEYOR_TASK_* values and these. Names starting with CONVEYOR_ are reserved.",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV_VARS:
            raise ValueError(f"at most {MAX_ENV_VARS} variables")
        for name, value in v.items():
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{name}: names starting with {RESERVED_ENV_PREFIX} are reserved for Conveyor")
            if "\x00" in value:
                raise ValueError(f"{name}: the value contains a NUL byte")
        return v


class BatchStep(_ProcessStep):
    kind: Literal["batch"]
    params: BatchParams


class DatabricksStep(_ProcessStep):
    kind: Literal["databricks"]
    params: DatabricksParams


class AzureMLStep(_ProcessStep):
    kind: Literal["azureml"]
    params: AzureMLParams


class RegisterStep(_StepBase):
    kind: Literal["register"]
    params: RegisterParams


class DeployStep(_StepBase):
    kind: Literal["deploy"]
    params: DeployParams = Field(default_factory=DeployParams)


Step = Annotated[BatchStep | DatabricksStep | AzureMLStep | RegisterStep | DeployStep, Field(discriminator="kind")]
STEP_KINDS = ("batch", "databricks", "azureml", "register", "deploy")


# ---------------------------------------------------------------- flow


class Policies(_Strict):
    max_concurrent_runs: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="Runs beyond this wait in status 'queued' (never skipped)"
    )
    on_failure: Literal["fail_fast", "continue"] = Field(
        default="fail_fast",
        description="fail_fast: a failed step cancels what runs and starts nothing new (but run_if "
        "always/any_failed steps); continue: independent branches finish",
    )
    max_items: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=10_000, description="A for_each list longer than this fails its step"
    )


class ModelSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")]
    metric: str = Field(description="Metric the champion/challenger gate compares, e.g. r2")
    direction: Literal["maximize", "minimize"] = "maximize"
    min_improvement: float = Field(default=0.0, ge=0, description="Challenger must beat champion by this much")


_TEMPLATE_REF = re.compile(r"\$\{steps\.([A-Za-z0-9_-]+)\.")  # kept for importers; see step_problems


def step_problems(steps: Sequence[Any], *, has_model: bool) -> list[str]:
    """Cross-step problems of a flow's steps, given as plain dicts (name, kind, params).

    One message per problem, prefixed with its path inside the flow (``steps[2].params.command:
    ...``). Shared by :class:`Flow`'s validator and the loader, which also runs it on the raw
    YAML so these are reported even when other fields of the flow are invalid. Entries that
    are not dicts are skipped (the field validation reports them).
    """
    from shared.flows.dag import not_upstream, upstream_sets
    from shared.flows.template import SCOPE_ROOTS, TemplateError, references_by_field

    problems: list[str] = []
    seen: set[str] = set()
    upstream = upstream_sets(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            continue
        name, kind, params = step.get("name"), step.get("kind"), step.get("params")
        if isinstance(name, str) and name in seen:
            problems.append(f"steps[{i}].name: duplicate step name {name!r}")
        base = f"steps[{i}].params"
        try:
            by_field = references_by_field(params, base) if isinstance(params, (Mapping, list)) else {}
            env = step.get("env")
            by_field.update(references_by_field(env, f"steps[{i}].env") if isinstance(env, Mapping) else {})
        except TemplateError as exc:
            problems.append(f"{exc.field}: {exc.message}")
            by_field = {}
        for field, refs in sorted(by_field.items()):
            for ref in sorted(refs):
                root, _, rest = ref.partition(".")
                if root not in SCOPE_ROOTS:
                    problems.append(
                        f"{field}: unknown reference ${{{ref}}}: references start with {', '.join(SCOPE_ROOTS)}"
                    )
                elif root == "steps" and rest.split(".")[0] not in upstream[i]:
                    target = rest.split(".")[0]
                    hint = ""
                    if kind == "deploy" and field == f"{base}.version":
                        hint = " (a deploy step's version defaults to ${steps.register.outputs.version})"
                    problems.append(f"{field}: {not_upstream(target, steps)}{hint}")
        if isinstance(name, str):
            seen.add(name)
        model_name = params.get("model_name") if isinstance(params, Mapping) else None
        if kind in ("register", "deploy") and not has_model and model_name is None:
            problems.append(f"steps[{i}]: a {kind} step needs the flow's model (name, metric) or params.model_name")
    return problems


class Flow(_Strict):
    description: str = ""
    triggers: list[Trigger] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1)
    policies: Policies = Field(default_factory=Policies)
    model: ModelSpec | None = None

    @model_validator(mode="after")
    def _check_steps(self) -> Flow:
        # Every problem is reported, one per line (see step_problems, shared.flows.dag and
        # shared.flows.scope).
        from shared.flows.dag import dag_problems
        from shared.flows.scope import reference_problems

        raw = [_raw_step(s) for s in self.steps]
        problems = step_problems(raw, has_model=self.model is not None) + dag_problems(raw)
        problems += reference_problems(raw, [t.model_dump(mode="json") for t in self.triggers])
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def graph(self) -> Graph:
        """The needs graph of the steps (cheap: names and needs only)."""
        from shared.flows.dag import Graph

        return Graph.of([{"name": s.name, "needs": s.needs} for s in self.steps])

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def step_index(self, name: str) -> int:
        for i, s in enumerate(self.steps):
            if s.name == name:
                return i
        raise KeyError(name)


def _raw_step(step: Any) -> dict[str, Any]:
    """A parsed step as the plain dict the cross-step checks read."""
    return {
        "name": step.name,
        "kind": step.kind,
        "params": step.params.model_dump(mode="json"),
        "needs": step.needs,
        "for_each": step.for_each,
        "max_parallel": step.max_parallel,
        "if": step.if_,
        "env": getattr(step, "env", {}),
    }


class FlowsFile(_Strict):
    version: Literal[1] = 1
    flows: dict[Annotated[str, Field(pattern=NAME_RE)], Flow] = Field(min_length=1)
