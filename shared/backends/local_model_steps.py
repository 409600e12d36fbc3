"""Local register and deploy steps: the same work as RegisterBackend / DeployBackend, in its own process.

A local host can be short-lived (a laptop, the chaos test), while a registration costs an
MLflow import and its SQLite set-up (seconds in a fresh process) and a deployment may start the
scoring server. So locally the step runs as ``python -m shared.backends.local_model_steps
<run dir>`` under the LocalRunBackend machinery: ``launch`` writes run.json and returns, the
process outlives a host that dies (its exit code and ``result.json`` are adopted by the next
host, never run twice), and ``poll`` reports.

run.json holds the launch request and where the registry (MLflow tracking URI, artifact root)
and the scoring endpoint (home, host, port) are; the process builds them from it, not from
the host's settings. ``result.json`` is ``{"state": "succeeded", "outputs"}`` or
``{"state": "failed", "error", "retryable"}``. Deploys hold ``<home>/endpoints/gate.lock``
around the gate: it reads and moves the champion, one deploy at a time across processes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.base import LaunchRequest, request_from_json, request_to_json
from shared.backends.commandline import (
    JobLock,
    LocalRun,
    LocalRunBackend,
    atomic_write_json,
    child_env,
    read_json,
    tail_text,
)
from shared.errors import ConveyorError

if TYPE_CHECKING:
    from shared.deploy.local_endpoint import LocalScoringDeployer
    from shared.registry.mlflow_registry import MlflowRegistry

_CODE_ROOT = Path(__file__).resolve().parents[2]  # where ``shared`` is importable from


class LocalModelStepBackend(LocalRunBackend):
    """``kind`` is ``register`` or ``deploy``."""

    def __init__(
        self,
        kind: str,
        home: Path,
        registry: MlflowRegistry,
        deployer: LocalScoringDeployer | None = None,
        *,
        resume: bool = True,
    ) -> None:
        if kind not in ("register", "deploy") or (kind == "deploy" and deployer is None):
            raise ValueError(f"no local model step {kind!r}")
        super().__init__(home, resume=resume)
        self.kind = kind
        self.registry = registry
        self.deployer = deployer

    def _prepare(self, request: LaunchRequest, rdir: Path) -> dict[str, Any]:
        from shared.backends.deploy import DeployBackend
        from shared.backends.register import RegisterBackend

        if self.kind == "register":  # bad params fail the launch at once, as in-process
            RegisterBackend(self.registry).check(request)
        else:
            assert self.deployer is not None
            DeployBackend(self.registry, self.deployer).check(request)
        spec: dict[str, Any] = {
            "key": request.key,
            "kind": self.kind,
            "request": request_to_json(request),
            "registry": {"tracking_uri": self.registry.tracking_uri, "artifact_root": str(self.registry.artifact_root)},
        }
        if self.deployer is not None:
            d = self.deployer
            spec["deployer"] = {"home": str(d.home), "host": d.host, "port": d.port}
        return spec

    def _execute(self, run: LocalRun) -> dict[str, Any]:
        result = run.dir / "result.json"
        env = child_env({"PYTHONPATH": str(_CODE_ROOT), "PYTHONUNBUFFERED": "1"})
        code, why = self.run_process(
            run,
            [sys.executable, "-m", "shared.backends.local_model_steps", str(run.dir)],
            cwd=_CODE_ROOT,
            env=env,
            stdout=run.dir / "stdout.txt",
            stderr=run.dir / "stderr.txt",
            part="main",
            prepare=lambda: result.unlink(missing_ok=True),
        )
        if why == "cancelled":
            return {"state": "cancelled"}
        doc = read_json(result)
        if isinstance(doc, dict) and doc.get("state") in ("succeeded", "failed"):
            return doc
        tail = tail_text(run.dir / "stderr.txt", lines=15)
        return {
            "state": "failed",
            "error": f"the {self.kind} process exited with code {code}" + (f":\n{tail}" if tail else ""),
        }


def run_step(rdir: Path) -> dict[str, Any]:
    """Do the step's work for the run in ``rdir``; the result document (never raises for a ConveyorError)."""
    from shared.backends.deploy import DeployBackend
    from shared.backends.register import RegisterBackend, version_outputs
    from shared.registry.mlflow_registry import MlflowRegistry

    spec = read_json(rdir / "run.json")
    if not isinstance(spec, dict):
        return {"state": "failed", "error": f"no run.json in {rdir}"}
    request = request_from_json(spec["request"])
    reg = spec["registry"]
    registry = MlflowRegistry(reg["tracking_uri"], Path(reg["artifact_root"]))
    try:
        if spec["kind"] == "register":
            return {"state": "succeeded", "outputs": version_outputs(RegisterBackend(registry).register(request))}
        from shared.deploy.local_endpoint import LocalScoringDeployer

        dep = spec["deployer"]
        deployer = LocalScoringDeployer(Path(dep["home"]), dep["host"], int(dep["port"]))
        deployer.endpoints_dir.mkdir(parents=True, exist_ok=True)
        gate = JobLock(deployer.endpoints_dir / "gate.lock")
        gate.acquire()  # the champion is read and moved by one deploy at a time, across processes
        try:
            outputs = DeployBackend(registry, deployer).gate_and_deploy(request)
        finally:
            gate.release()
        return {"state": "succeeded", "outputs": outputs}
    except ConveyorError as exc:
        return {"state": "failed", "error": str(exc), "retryable": exc.retryable}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m shared.backends.local_model_steps RUN_DIR\n")
        return 2
    rdir = Path(argv[1])
    atomic_write_json(rdir / "result.json", run_step(rdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
