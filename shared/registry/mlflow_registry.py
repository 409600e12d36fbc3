"""ModelRegistry on MLflow (locally: a SQLite tracking/registry store and a file artifact root).

``register`` really stores the model: it opens a run in the ``conveyor-registry`` experiment,
tags it with the lineage, logs the metrics, copies the MLflow model directory into the run's
artifacts and creates a model version whose source is that copy. The version carries the
idempotency key (tag ``conveyor.key``), the lineage tags and the metrics (``metric.<name>``),
so everything the gate and the deployer need is on the version itself.

The champion is the MLflow alias ``champion``; a promotion moves the old champion to alias
``previous``. Gate decisions are version tags ``gate.*``.

mlflow is imported lazily (cold start); MlflowException is mapped to shared.errors here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from shared.errors import (
    BadRequestError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    TransientError,
    ValidationError,
)
from shared.registry.base import (
    METRIC_PREFIX,
    ModelRegistry,
    ModelVersion,
    gate_tags,
    lineage_tags,
    stored_metrics,
)

if TYPE_CHECKING:
    from shared.settings import Settings

EXPERIMENT = "conveyor-registry"
CHAMPION = "champion"
PREVIOUS = "previous"
KEY_TAG = "conveyor.key"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_SERVICE = "mlflow"


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Map MlflowException (and SQLite lock contention) into Conveyor's error tree."""
    try:
        yield
    except ConveyorError:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            text = str(exc).lower()
            if "database is locked" in text or "timeout" in text:
                raise TransientError(f"{what}: {exc}", service=_SERVICE) from exc
            raise
        code = getattr(exc, "error_code", "") or ""
        message = f"{what}: {exc.message}"
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(message, service=_SERVICE, status=404) from exc
        if code == "RESOURCE_ALREADY_EXISTS":
            raise ConflictError(message, service=_SERVICE, status=409) from exc
        if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"):
            raise BadRequestError(message, service=_SERVICE, status=400) from exc
        if code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED") or (
            "database is locked" in message.lower()
        ):
            raise TransientError(message, service=_SERVICE) from exc
        raise PermanentError(message, service=_SERVICE) from exc


def local_model_dir(model_uri: str, field: str = "params.model_uri") -> Path:
    """The local directory of an MLflow model given as a path or ``file://`` URI (must hold MLmodel)."""
    if not model_uri or not model_uri.strip():
        raise ValidationError("is empty", field=field)
    parsed = urlparse(model_uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValidationError(f"file URI with a host is not supported: {model_uri!r}", field=field)
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(model_uri)
    else:
        raise ValidationError(
            f"the local registry takes a local path or file:// URI of an MLflow model, got {parsed.scheme}://",
            field=field,
        )
    path = path.expanduser().resolve()
    if path.is_file() and path.name == "MLmodel":
        path = path.parent
    if not (path / "MLmodel").is_file():
        raise ValidationError(f"{str(path)!r} is not an MLflow model directory (no MLmodel file)", field=field)
    return path


@contextlib.contextmanager
def _schema_setup_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time sets up a SQLite store's schema: two fresh processes migrating one
    new file at once fail ("duplicate column name"), e.g. local register steps started together.
    Other stores (an MLflow server) set up their own."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".setup.lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def _quote(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class MlflowRegistry(ModelRegistry):
    def __init__(self, tracking_uri: str, artifact_root: Path, client: Any | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root)
        self._client = client
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        base = settings.home / "mlflow"
        uri = settings.mlflow_tracking_uri
        if not uri:
            base.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(base / 'mlflow.db').as_posix()}"
        return cls(uri, base / "artifacts")

    # ------------------------------------------------------------ plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from mlflow.tracking import MlflowClient

                    with _mlflow_errors("open the MLflow store"), _schema_setup_lock(self.tracking_uri):
                        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                        client.search_experiments(max_results=1)  # the stores create or migrate
                        client.search_registered_models(max_results=1)  # their schema on first use
                        self._client = client
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is not None:
            return self._experiment_id
        client = self.client
        with _mlflow_errors(f"experiment {EXPERIMENT}"):
            exp = client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                try:
                    self._experiment_id = client.create_experiment(
                        EXPERIMENT, artifact_location=self.artifact_root.resolve().as_uri()
                    )
                except Exception:  # lost a creation race: the other creator's experiment will do
                    exp = client.get_experiment_by_name(EXPERIMENT)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

    @staticmethod
    def _to_model_version(mv: Any) -> ModelVersion:
        tags: dict[str, str] = dict(mv.tags or {})
        return ModelVersion(
            name=mv.name, version=str(mv.version), source_uri=mv.source, metrics=stored_metrics(tags), tags=tags
        )

    def _check_name(self, name: str) -> None:
        if not _NAME_RE.match(name or ""):
            raise ValidationError(f"invalid model name {name!r}", field="params.model_name")

    # ------------------------------------------------------------ port

    def find_by_key(self, key: str, name: str | None = None) -> ModelVersion | None:
        """The version registered with idempotency key ``key`` (optionally within ``name``)."""
        filt = f"tags.`{KEY_TAG}` = {_quote(key)}"
        if name:
            filt = f"name = {_quote(name)} and {filt}"
        with _mlflow_errors(f"search model versions for key {key}"):
            found = self.client.search_model_versions(filter_string=filt, max_results=10)
        if not found:
            return None
        first = min(found, key=lambda mv: int(mv.version))
        return self._to_model_version(first)

    def _finished_run_for_key(self, key: str) -> Any | None:
        with _mlflow_errors(f"search runs for key {key}"):
            runs = self.client.search_runs(
                [self._experiment()],
                filter_string=f"tags.`{KEY_TAG}` = {_quote(key)} and attributes.status = 'FINISHED'",
                max_results=1,
            )
        return runs[0] if runs else None

    def register(
        self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str
    ) -> ModelVersion:
        self._check_name(name)
        if not key:
            raise ValidationError("is empty", field="key")
        existing = self.find_by_key(key, name)
        if existing is not None:
            return existing
        model_dir = local_model_dir(model_uri)
        clean_metrics = {str(k): float(v) for k, v in metrics.items()}
        lineage = lineage_tags(tags)
        client = self.client
        experiment_id = self._experiment()
        # A run for this key that finished but whose version was never created (crash in
        # between) is reused, so a redelivery does not leave a second copy of the model.
        run = self._finished_run_for_key(key)
        with _mlflow_errors(f"register {name} from {model_dir}"):
            if run is None:
                run_tags = {**lineage, KEY_TAG: key, "mlflow.runName": f"register-{name}-{key}"[:250]}
                run = client.create_run(experiment_id, tags=run_tags)
                run_id = run.info.run_id
                try:
                    if clean_metrics:
                        from mlflow.entities import Metric

                        now = int(time.time() * 1000)
                        client.log_batch(
                            run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(clean_metrics.items())]
                        )
                    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
                except BaseException:
                    client.set_terminated(run_id, status="FAILED")
                    raise
                client.set_terminated(run_id, status="FINISHED")
                run = client.get_run(run_id)
            run_id = run.info.run_id
            source = f"{run.info.artifact_uri.rstrip('/')}/model"
            with contextlib.suppress(ConflictError), _mlflow_errors(f"create registered model {name}"):
                client.create_registered_model(name, tags={"conveyor.managed": "true"})
            version_tags = {
                **lineage,
                KEY_TAG: key,
                "conveyor.source_model_uri": str(model_uri),
                **{f"{METRIC_PREFIX}{k}": repr(v) for k, v in clean_metrics.items()},
            }
            created = client.create_model_version(
                name=name, source=source, run_id=run_id, tags=version_tags, await_creation_for=0
            )
        # Two launches racing on one key both create a version: the lowest number wins, always.
        winner = self.find_by_key(key, name)
        return winner if winner is not None else self._to_model_version(created)

    def get(self, name: str, version: str) -> ModelVersion:
        with _mlflow_errors(f"model {name} version {version}"):
            mv = self.client.get_model_version(name, str(version))
        return self._to_model_version(mv)

    def champion(self, name: str) -> ModelVersion | None:
        return self._alias(name, CHAMPION)

    def previous(self, name: str) -> ModelVersion | None:
        """The version that held the champion alias before the current one."""
        return self._alias(name, PREVIOUS)

    def _alias(self, name: str, alias: str) -> ModelVersion | None:
        try:
            with _mlflow_errors(f"alias {alias} of {name}"):
                mv = self.client.get_model_version_by_alias(name, alias)
        except (NotFoundError, BadRequestError):
            return None
        return self._to_model_version(mv)

    def promote(self, name: str, version: str) -> None:
        version = str(version)
        self.get(name, version)  # NotFoundError for an unknown version, before any alias moves
        current = self.champion(name)
        if current is not None and current.version == version:
            return  # already champion: promoting twice must not make it its own 'previous'
        with _mlflow_errors(f"promote {name} v{version}"):
            if current is not None:
                self.client.set_registered_model_alias(name, PREVIOUS, current.version)
            self.client.set_registered_model_alias(name, CHAMPION, version)
            self.client.set_model_version_tag(name, version, "conveyor.promoted_at", str(int(time.time())))

    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        with _mlflow_errors(f"record gate decision on {name} v{version}"):
            for tag, value in gate_tags(decision).items():
                self.client.set_model_version_tag(name, str(version), tag, value)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (the console, the CLI)."""
        with _mlflow_errors(f"versions of {name}"):
            found = self.client.search_model_versions(filter_string=f"name = {_quote(name)}", max_results=1000)
        return sorted((self._to_model_version(mv) for mv in found), key=lambda m: int(m.version))

    def model_names(self) -> list[str]:
        """Every registered model's name, sorted (at most 10 pages of the store's search, 10,000 names)."""
        names: list[str] = []
        token: str | None = None
        with _mlflow_errors("list registered models"):
            for _ in range(10):
                page = self.client.search_registered_models(max_results=1000, page_token=token)
                names.extend(str(m.name) for m in page)
                token = getattr(page, "token", None)
                if not token:
                    break
        return sorted(set(names))
