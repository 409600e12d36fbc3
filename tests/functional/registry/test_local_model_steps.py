"""The local register and deploy steps in their own process, on MLflow and the scoring endpoint.

``launch`` returns before MLflow is even imported; the step's process registers (or gates and
deploys) and leaves its result; a host killed with its process group right after the launch
leaves the process running, and the next host adopts its result: one version per key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_model_steps import LocalModelStepBackend
from shared.deploy.local_endpoint import LocalScoringDeployer, stop_server
from shared.local.azurite import free_port
from shared.registry.mlflow_registry import MlflowRegistry
from tests.conftest import REPO_ROOT
from tests.functional.backends.conftest import marked_pids, wait_done, wait_for
from tests.functional.registry.test_train_register_deploy import MODEL, train_one

pytestmark = pytest.mark.functional


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    stop_server(home)


def registry_of(home: Path) -> MlflowRegistry:
    return MlflowRegistry(f"sqlite:///{(home / 'mlflow' / 'mlflow.db').as_posix()}", home / "mlflow" / "artifacts")


def step_request(step: str, key: str, params: dict) -> LaunchRequest:
    return LaunchRequest(
        run_id="run1", flow="retrain", step=step, kind=step, key=key, attempt=1, params=params, model=MODEL
    )


def test_register_and_deploy_run_in_their_own_process(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, metrics = train_one(tmp_path / "m", 1.0, 1, monkeypatch)
    registry = registry_of(home)
    deployer = LocalScoringDeployer(home, "127.0.0.1", free_port())
    reg = LocalModelStepBackend("register", home, registry)
    dep = LocalModelStepBackend("deploy", home, registry, deployer)
    params = {"model_uri": str(model_dir), "metrics": {"r2": metrics["r2"]}}

    started = time.monotonic()
    launched = reg.launch(step_request("register", "run1-register-1", params))
    assert time.monotonic() - started < 2  # no MLflow in the host: the step's process does it
    registered = wait_done(reg, launched.remote_id, timeout=120)
    assert registered.state == "succeeded", registered.error
    assert registered.outputs["model_name"] == "sales-forecaster" and registered.outputs["version"] == "1"
    again = reg.launch(step_request("register", "run1-register-1", params))
    assert again.reattached and wait_done(reg, again.remote_id).outputs == registered.outputs

    deployed = wait_done(dep, dep.launch(step_request("deploy", "run1-deploy-1", {"version": "1"})).remote_id, 120)
    assert deployed.state == "succeeded", deployed.error
    assert deployed.outputs["decision"] == "promoted" and deployed.outputs["serving_version"] == "1"
    fresh = LocalModelStepBackend("deploy", home, registry, deployer)  # another host on the same home
    assert fresh.poll("run1-deploy-1").outputs == deployed.outputs
    assert registry.champion("sales-forecaster").version == "1"  # type: ignore[union-attr]


def test_bad_params_fail_the_launch_at_once(home: Path) -> None:
    from shared.errors import ValidationError

    reg = LocalModelStepBackend("register", home, registry_of(home))
    with pytest.raises(ValidationError) as err:
        reg.launch(step_request("register", "run1-register-1", {"metrics": {"r2": 1}}))
    assert err.value.field == "params.model_uri"


HOST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.backends.base import LaunchRequest
    from shared.backends.local_model_steps import LocalModelStepBackend
    from shared.registry.mlflow_registry import MlflowRegistry
    home = Path(sys.argv[1])
    registry = MlflowRegistry(f"sqlite:///{(home / 'mlflow' / 'mlflow.db').as_posix()}", home / "mlflow" / "artifacts")
    be = LocalModelStepBackend("register", home, registry)
    model = {"name": "sales-forecaster", "metric": "r2"}
    be.launch(LaunchRequest("run1", "retrain", "register", "register", "run1-register-1", 1,
              {"model_uri": sys.argv[2], "metrics": {"r2": 0.5}}, model=model))
    print("launched", flush=True)
    time.sleep(60)
    """
)


def test_a_registration_outliving_its_host_is_adopted(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, _metrics = train_one(tmp_path / "m", 1.0, 1, monkeypatch)
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(home), str(model_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == b"launched"
        wait_for(lambda: marked_pids("register/run1-register-1/"), what="the register process to start")
    finally:
        os.killpg(host.pid, signal.SIGKILL)
        host.wait()
    registry = registry_of(home)
    second = LocalModelStepBackend("register", home, registry)
    status = wait_done(second, "run1-register-1", timeout=120)
    assert status.state == "succeeded", status.error
    assert status.reruns == 0  # adopted, not registered again
    assert [v.version for v in registry.versions("sales-forecaster")] == ["1"]
