"""Local Azure ML: run a v2 pipeline job YAML's command jobs in dependency order.

The subset of the real ``type: pipeline`` schema that is honoured::

    type: pipeline
    inputs:                      # pipeline inputs: literals or {type, path|default|value}
      data: {type: uri_file, path: ../data/train.csv}
      alpha: 0.5
    jobs:
      prep:
        type: command
        code: ../src             # relative to the YAML; must stay inside the project root
        command: python prep.py --data ${{inputs.data}} --out ${{outputs.clean}} $[[--alpha ${{inputs.alpha}}]]
        inputs:
          data: ${{parent.inputs.data}}
          alpha: ${{parent.inputs.alpha}}
        outputs:
          clean: {type: uri_folder}
        environment_variables: {K: v}
        limits: {timeout: 600}
      train:
        type: command
        code: ../src
        command: python train.py --data ${{inputs.d}} --model ${{outputs.model}}
        inputs:
          d: ${{parent.jobs.prep.outputs.clean}}
        outputs:
          model: {type: uri_folder}

``environment``, ``compute``, ``resources``, ``display_name`` and the like are accepted and
ignored. A command runs by the one rule of shared.flows.argv: it is split into words like a
shell does, each ``${{...}}`` fills one word (or part of one), and the words run as argv
without a shell, cwd = the job's code directory (``$[[...]]`` blocks are kept or dropped in
the template first). The environment is the allow-list of shared.backends.task_env: the
step's ``env:``, the job's ``environment_variables``, then the task's own values. Jobs append
metrics as JSON lines ``{"name", "value"}`` to ``$CONVEYOR_TASK_METRICS_FILE`` (no MLflow
needed; the last value of a name wins).

Outputs: ``pipeline_run`` (the key), ``metrics``, ``outputs`` (``<job>.<output>`` paths),
``model_uri`` (the first output named ``model``) and, when there are any, ``inputs``: the
literal values of ``params.inputs`` the pipeline ran with (data inputs left out), so a step
after a for_each over these outputs can name what each instance was for
(``${item.inputs.partition}``).

``params.inputs`` override pipeline inputs: a blob URL (downloaded into
``<run dir>/inputs/<name>/``; a URL ending in ``/`` is a folder prefix), a local path
(relative to the project root, or absolute under the Conveyor home), or a literal.

Run directory ``<home>/azureml/<key>/``: run.json, lock, progress.json (jobs completed, so a
restarted host resumes after them), status.json, inputs/, ``<job>/outputs/<name>/``,
``<job>/stdout.txt``, ``<job>/stderr.txt``, ``<job>/metrics.jsonl``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.azureml_common import pipeline_params
from shared.backends.base import LaunchRequest
from shared.backends.commandline import (
    LocalRun,
    LocalRunBackend,
    is_within,
    local_file_name,
    safe_join,
    safe_relpath,
    tail_text,
)
from shared.backends.task_env import task_env
from shared.errors import PermanentError, ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore
    from shared.flows.argv import Slot
    from shared.settings import Settings

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")
_EXPR = re.compile(r"\$\{\{\s*([^{}]*?)\s*\}\}")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_PARENT_INPUT = re.compile(r"^parent\.inputs\.([A-Za-z_][A-Za-z0-9_-]*)$")
_PARENT_JOB_OUTPUT = re.compile(r"^parent\.jobs\.([A-Za-z_][A-Za-z0-9_-]*)\.outputs\.([A-Za-z_][A-Za-z0-9_-]*)$")
_FOLDER_TYPES = ("uri_folder", "mlflow_model", "custom_model", "mltable")
_LITERAL_TYPES = ("string", "number", "integer", "boolean")


class LocalAzureMLBackend(LocalRunBackend):
    kind = "azureml"

    def __init__(self, home: Path, root: Path, blobs: BlobStore | None, *, resume: bool = True) -> None:
        super().__init__(home, resume=resume)
        self.root = Path(root).resolve()
        self.blobs = blobs

    @classmethod
    def from_settings(cls, settings: Settings, blobs: BlobStore | None = None) -> LocalAzureMLBackend:
        return cls(settings.home, settings.root, blobs)

    # ------------------------------------------------------------ launch: parse and validate

    def _prepare(self, request: LaunchRequest, rdir: Path) -> dict[str, Any]:
        import yaml

        params, yaml_path = pipeline_params(request, self.root)
        if yaml_path is None:
            raise PermanentError(
                "a v1 published pipeline lives in an Azure ML workspace, which local mode cannot run: "
                "set params.pipeline (a pipeline job YAML in the project) for local runs",
                service="azureml",
            )
        try:
            doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValidationError(f"not valid YAML: {exc}", field="params.pipeline") from exc
        if not isinstance(doc, dict):
            raise ValidationError("a pipeline job YAML must be a mapping", field="pipeline")
        if doc.get("type", "pipeline") != "pipeline":
            raise ValidationError(f"expected type: pipeline, got {doc.get('type')!r}", field="pipeline.type")
        base = yaml_path.parent
        jobs = self._parse_jobs(doc.get("jobs"), base)
        declared = _mapping(doc.get("inputs"), "pipeline.inputs")
        referenced = {ref["input"] for job in jobs for ref in job["inputs"].values() if ref.get("ref") == "parent"}
        inputs: dict[str, dict[str, Any]] = {}
        for name, value in declared.items():
            _check_name(name, f"pipeline.inputs.{name}")
            inputs[name] = self._pipeline_input(value, base, f"pipeline.inputs.{name}")
        for name, value in params.inputs.items():
            fld = f"params.inputs.{name}"
            if name not in declared and name not in referenced:
                known = ", ".join(sorted(set(declared) | referenced)) or "none"
                raise ValidationError(f"the pipeline has no input {name!r} (known: {known})", field=fld)
            _check_name(name, fld)
            declared_type = declared[name].get("type") if isinstance(declared.get(name), dict) else None
            inputs[name] = self._param_input(value, declared_type, fld)
        for job in jobs:
            self._check_job(job, inputs, jobs)
        literals = {name: inputs[name]["value"] for name in params.inputs if inputs[name]["kind"] == "literal"}
        return {
            "key": request.key,
            "run_id": request.run_id,
            "step": request.step,
            "traceparent": request.traceparent,
            "index": request.index,
            "experiment": params.experiment,
            "pipeline": str(yaml_path),
            "inputs": inputs,
            "literal_inputs": literals,
            "jobs": _ordered(jobs),
            "env": dict(request.env),
        }

    def _parse_jobs(self, raw: Any, base: Path) -> list[dict[str, Any]]:
        jobs_raw = _mapping(raw, "pipeline.jobs")
        if not jobs_raw:
            raise ValidationError("a pipeline needs at least one job", field="pipeline.jobs")
        jobs = []
        for name, body in jobs_raw.items():
            fld = f"pipeline.jobs.{name}"
            _check_name(name, fld)
            body = _mapping(body, fld)
            if "component" in body:
                raise ValidationError("component jobs are not supported locally; inline a command job", field=fld)
            if body.get("type", "command") != "command":
                raise ValidationError(f"only command jobs run locally, got {body.get('type')!r}", field=f"{fld}.type")
            command = body.get("command")
            if not isinstance(command, str) or not command.strip():
                raise ValidationError("a command job needs a command", field=f"{fld}.command")
            code = body.get("code", ".")
            if not isinstance(code, str) or code.startswith(("azureml:", "http://", "https://")):
                raise ValidationError(f"code must be a local folder, got {code!r}", field=f"{fld}.code")
            cwd = (base / code).resolve()
            if not is_within(self.root, cwd) or not cwd.is_dir():
                raise ValidationError(f"code folder {code!r} is not a folder inside the project", field=f"{fld}.code")
            inputs = {}
            for iname, value in _mapping(body.get("inputs"), f"{fld}.inputs").items():
                _check_name(iname, f"{fld}.inputs.{iname}")
                inputs[iname] = self._job_input(value, base, f"{fld}.inputs.{iname}")
            outputs = {}
            for oname, value in _mapping(body.get("outputs"), f"{fld}.outputs").items():
                _check_name(oname, f"{fld}.outputs.{oname}")
                otype = value.get("type", "uri_folder") if isinstance(value, dict) else "uri_folder"
                outputs[oname] = str(otype)
            env = {str(k): str(v) for k, v in _mapping(body.get("environment_variables"), f"{fld}.env").items()}
            limits = _mapping(body.get("limits"), f"{fld}.limits")
            timeout = limits.get("timeout")
            if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
                raise ValidationError("must be a positive number of seconds", field=f"{fld}.limits.timeout")
            jobs.append(
                {
                    "name": name,
                    "cwd": str(cwd),
                    "command": command.strip(),
                    "inputs": inputs,
                    "outputs": outputs,
                    "env": env,
                    "timeout": timeout,
                }
            )
        return jobs

    def _job_input(self, value: Any, base: Path, fld: str) -> dict[str, Any]:
        if isinstance(value, dict):
            if "path" in value:
                return self._job_input(value["path"], base, f"{fld}.path")
            if "value" in value:
                return {"literal": _literal(value["value"])}
            raise ValidationError("an input mapping needs path or value", field=fld)
        if isinstance(value, str) and "${{" in value:
            m = _EXPR.fullmatch(value.strip())
            expr = m.group(1) if m else ""
            if pm := _PARENT_INPUT.match(expr):
                return {"ref": "parent", "input": pm.group(1)}
            if jm := _PARENT_JOB_OUTPUT.match(expr):
                return {"ref": "job", "job": jm.group(1), "output": jm.group(2)}
            raise ValidationError(
                f"unsupported binding {value!r}: use ${{{{parent.inputs.x}}}} or ${{{{parent.jobs.j.outputs.o}}}}",
                field=fld,
            )
        return {"literal": _literal(value)}

    def _pipeline_input(self, value: Any, base: Path, fld: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {"kind": "literal", "value": _literal(value)}
        itype = str(value.get("type", ""))
        if "path" in value and itype not in _LITERAL_TYPES:
            path = str(value["path"])
            if "://" in path:
                return self._blob_input(path, itype, fld)
            if path.startswith("azureml:"):
                raise ValidationError(f"{path!r} is an Azure ML asset; local runs need a file or blob URL", field=fld)
            p = (base / path).resolve()
            if not is_within(self.root, p) or not p.exists():
                raise ValidationError(f"{path!r} is not a file or folder inside the project", field=fld)
            return {"kind": "path", "path": str(p), "type": itype}
        for key in ("value", "default", "path"):
            if key in value:
                return {"kind": "literal", "value": _literal(value[key])}
        return {"kind": "missing", "type": itype}

    def _param_input(self, value: str, declared_type: Any, fld: str) -> dict[str, Any]:
        itype = str(declared_type or "")
        if itype in _LITERAL_TYPES:
            return {"kind": "literal", "value": value}
        if "://" in value:
            return self._blob_input(value, itype, fld)
        if value.startswith("/"):
            p = Path(value).resolve()
            if is_within(self.home, p) or is_within(self.root, p):
                if not p.exists():
                    raise ValidationError(f"no such file or folder: {value!r}", field=fld)
                return {"kind": "path", "path": str(p), "type": itype}
            raise ValidationError("an absolute path must be under the Conveyor home or project root", field=fld)
        if itype in _FOLDER_TYPES or itype == "uri_file":
            p = safe_join(self.root, value, field=fld)
            if not p.exists():
                raise ValidationError(f"no such file or folder under the project root: {value!r}", field=fld)
            return {"kind": "path", "path": str(p), "type": itype}
        try:
            p = safe_join(self.root, value, field=fld)
        except ValidationError:
            return {"kind": "literal", "value": value}
        if value and p.exists():
            return {"kind": "path", "path": str(p), "type": itype}
        return {"kind": "literal", "value": value}

    def _blob_input(self, url: str, itype: str, fld: str) -> dict[str, Any]:
        if self.blobs is None:
            raise ValidationError("blob inputs need a blob store", field=fld)
        container, name = self.blobs.parse_url(url)
        if not name.endswith("/"):
            local_file_name(name, field=fld)
        return {"kind": "blob", "url": url, "container": container, "name": name, "type": itype}

    @staticmethod
    def _check_job(job: dict[str, Any], inputs: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        fld = f"pipeline.jobs.{job['name']}"
        by_name = {j["name"]: j for j in jobs}
        present = {}
        for iname, ref in job["inputs"].items():
            if ref.get("ref") == "parent":
                src = inputs.get(ref["input"])
                if src is None or src["kind"] == "missing":
                    continue  # absent: only usable inside an optional $[[...]] block
            elif ref.get("ref") == "job":
                other = by_name.get(ref["job"])
                if other is None or other is job:
                    raise ValidationError(f"no other job named {ref['job']!r}", field=f"{fld}.inputs.{iname}")
                if ref["output"] not in other["outputs"]:
                    raise ValidationError(
                        f"job {ref['job']!r} has no output {ref['output']!r}", field=f"{fld}.inputs.{iname}"
                    )
            present[iname] = "x"
        aml_argv(job["command"], present, dict.fromkeys(job["outputs"], "x"), field=f"{fld}.command")

    # ------------------------------------------------------------ run

    def _execute(self, run: LocalRun) -> dict[str, Any]:
        spec = run.spec
        jobs: list[dict[str, Any]] = spec["jobs"]
        progress = run.progress if isinstance(run.progress.get("completed"), list) else {"completed": []}
        completed: list[str] = list(progress.get("completed", []))
        self.set_progress(run, done=len(completed), total=len(jobs), completed=completed)
        pipeline_inputs = self._materialise_inputs(run)
        outputs: dict[str, str] = {}
        for job in jobs:
            jdir = run.dir / job["name"]
            out_paths = {}
            for oname, otype in job["outputs"].items():
                folder = jdir / "outputs" / oname
                out_paths[oname] = str(folder / oname) if otype == "uri_file" else str(folder)
                outputs[f"{job['name']}.{oname}"] = out_paths[oname]
            if job["name"] in completed:
                continue

            def fresh(jdir: Path = jdir, job: dict[str, Any] = job) -> None:
                if jdir.exists():  # killed mid-flight with its host: run it again from scratch
                    shutil.rmtree(jdir)
                jdir.mkdir(parents=True)
                for oname in job["outputs"]:
                    (jdir / "outputs" / oname).mkdir(parents=True, exist_ok=True)

            values: dict[str, str] = {}
            for iname, ref in job["inputs"].items():
                if "literal" in ref:
                    values[iname] = ref["literal"]
                elif ref["ref"] == "parent":
                    if ref["input"] in pipeline_inputs:
                        values[iname] = pipeline_inputs[ref["input"]]
                else:
                    values[iname] = outputs[f"{ref['job']}.{ref['output']}"]
            argv = aml_argv(job["command"], values, out_paths, field=f"pipeline.jobs.{job['name']}")
            own = {
                "CONVEYOR_TASK_METRICS_FILE": str(jdir / "metrics.jsonl"),
                "AZUREML_RUN_ID": f"{run.key}_{job['name']}",
                "AZUREML_ROOT_RUN_ID": run.key,
                "AZUREML_EXPERIMENT_NAME": str(spec.get("experiment") or ""),
                "TRACEPARENT": spec.get("traceparent") or "",
                "PYTHONUNBUFFERED": "1",
            }
            env = task_env(own, {**(spec.get("env") or {}), **job["env"]})
            code, why = self.run_process(
                run,
                argv,
                cwd=Path(job["cwd"]),
                env=env,
                stdout=jdir / "stdout.txt",
                stderr=jdir / "stderr.txt",
                part=job["name"],
                timeout=job.get("timeout"),
                prepare=fresh,
            )
            if why == "cancelled":
                return {"state": "cancelled"}
            if why == "timeout" or code != 0:
                reason = (
                    f"exceeded its timeout of {job['timeout']}s" if why == "timeout" else f"exited with code {code}"
                )
                tail = tail_text(jdir / "stderr.txt", lines=15)
                later = [j["name"] for j in jobs[jobs.index(job) + 1 :]]
                msg = f"job {job['name']!r} {reason}" + (f":\n{tail}" if tail else "")
                if later:
                    msg += f"\n(not run: {', '.join(later)})"
                return {"state": "failed", "error": msg}
            completed.append(job["name"])
            self.set_progress(run, done=len(completed), completed=completed)
        metrics: dict[str, Any] = {}
        for job in jobs:
            metrics.update(_read_metrics(run.dir / job["name"] / "metrics.jsonl"))
        model_uri = None
        for job in jobs:
            if "model" in job["outputs"]:
                model_uri = outputs[f"{job['name']}.model"]
                break
        result: dict[str, Any] = {
            "pipeline_run": run.key,
            "metrics": metrics,
            "outputs": outputs,
            "model_uri": model_uri,
        }
        if spec.get("literal_inputs"):
            result["inputs"] = dict(spec["literal_inputs"])
        return {"state": "succeeded", "outputs": result}

    def _materialise_inputs(self, run: LocalRun) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, src in run.spec["inputs"].items():
            kind = src["kind"]
            if kind == "literal":
                values[name] = src["value"]
            elif kind == "path":
                values[name] = src["path"]
            elif kind == "blob":
                values[name] = self._download(run, name, src)
        return values

    def _download(self, run: LocalRun, name: str, src: dict[str, Any]) -> str:
        assert self.blobs is not None
        folder = run.dir / "inputs" / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        container, blob = src["container"], src["name"]
        if blob.endswith("/"):
            for info in self.blobs.list_blobs(container, blob):
                rel = info.name[len(blob) :]
                if rel and not rel.endswith("/"):
                    target = safe_join(folder, rel, field=f"inputs.{name}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.blobs.download_to(container, info.name, target)
            return str(folder)
        target = safe_join(folder, local_file_name(blob, field=f"inputs.{name}"))
        self.blobs.download_to(container, blob, target)
        return str(folder) if src.get("type") in _FOLDER_TYPES else str(target)


def aml_argv(command: str, inputs: dict[str, str], outputs: dict[str, str], *, field: str = "command") -> list[str]:
    """The argv of a command job: ``${{inputs.x}}`` / ``${{outputs.y}}`` each fill one word (or
    part of one) by the rule of shared.flows.argv, values never split or parsed.

    ``$[[ ... ]]`` blocks are kept (without the brackets) when every input they name has a
    value and dropped otherwise, as Azure ML does for optional inputs; this edits the
    template, before it is split, and never looks at a value.
    """
    from shared.flows.argv import parse_command

    def lookup(expr: str) -> str | None:
        kind, _, name = expr.partition(".")
        if kind == "inputs":
            return inputs.get(name)
        if kind == "outputs":
            if name not in outputs:
                raise ValidationError(f"the job has no output {name!r}", field=field)
            return outputs[name]
        raise ValidationError(f"unsupported expression ${{{{{expr}}}}} in the command", field=field)

    def optional(m: re.Match[str]) -> str:
        block = m.group(1)
        if all(lookup(e) is not None for e in _EXPR.findall(block)):
            return block
        return ""

    def resolve(slot: Slot) -> str:
        value = lookup(slot.name)
        if value is None:
            raise ValidationError(f"${{{{{slot.name}}}}} has no value (bind it or wrap it in $[[...]])", field=field)
        return value

    template = parse_command(_OPTIONAL.sub(optional, command), field=field, syntax="azureml", placeholders=None)
    return template.render(resolve)


def _mapping(value: Any, fld: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("must be a mapping", field=fld)
    return {str(k): v for k, v in value.items()}


def _check_name(name: str, fld: str) -> None:
    if not _NAME.match(name):
        raise ValidationError(f"not a valid name: {name!r}", field=fld)
    safe_relpath(name, field=fld)


def _literal(value: Any) -> str:
    if isinstance(value, dict | list):
        raise ValidationError(f"expected a scalar value, got {value!r}", field="input")
    return str(value)


def _ordered(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs in dependency order (YAML order among independent jobs); refuses cycles."""
    deps = {j["name"]: {r["job"] for r in j["inputs"].values() if r.get("ref") == "job"} for j in jobs}
    order: list[dict[str, Any]] = []
    done: set[str] = set()
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if deps[j["name"]] <= done]
        if not ready:
            names = ", ".join(j["name"] for j in pending)
            raise ValidationError(f"jobs depend on each other in a cycle: {names}", field="pipeline.jobs")
        job = ready[0]
        order.append(job)
        done.add(job["name"])
        pending.remove(job)
    return order


def _read_metrics(path: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return metrics
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("name"), str) and "value" in rec:
            metrics[rec["name"]] = rec["value"]
    return metrics
