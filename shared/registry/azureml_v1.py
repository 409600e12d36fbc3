"""ModelRegistry on the Azure ML workspace model registry through SDK v1 (azureml-core).

.. warning::
   Azure ML SDK v1 is **past its end of support (2026-06-30)**; prefer the v2 registry
   (``CONVEYOR_AZUREML_SDK=v2``). Building this adapter logs that once per process.

* ``register`` — ``model_uri`` is either

  - ``azureml://jobs/<run id>/outputs/artifacts/paths/<path>`` (what the v1 azureml step returns for
    a step that wrote ``outputs/model/``): registered from the run's artifacts with
    ``Run.get(ws, run id).register_model(name, model_path=<path>, ...)``, no download; or
  - a local file/folder (path or ``file://``): uploaded with ``Model.register(ws, path, name, ...)``.

  Lineage tags plus ``conveyor.key`` and ``conveyor.source_model_uri`` become the version's
  **tags**; metrics become immutable **properties** ``metric.<name>``. Optional tags
  ``model_framework`` / ``model_framework_version`` (e.g. ``ScikitLearn`` / ``1.5.1``) are passed
  to the registration so the v1 no-code deployment can serve the model.
* **Idempotent on key** — ``Model.list(ws, name, tags=[["conveyor.key", key]])`` before
  registering; two racing registrations both create a version, and the lowest version number wins
  for everyone (``find_by_key`` always answers the lowest).
* **Champion / previous** — v1 has no aliases, so they are version tags: ``conveyor.champion=true``
  and ``conveyor.previous=true`` (plus ``conveyor.promoted_at``). ``promote`` tags the new champion
  first, then moves the old champion to previous and clears the older previous; if a crash leaves
  two champions, the one promoted last (``conveyor.promoted_at``) is the champion.
* Gate decisions are version tags ``gate.*`` (``Model.add_tags`` through
  ``update_tags_properties``).
* ``source_uri`` of a version is the asset reference ``azureml:<name>:<version>``.

Tests hand in a fake of the SDK surface (``sdk``: ``Model``, ``Run``) and a fake workspace, since
azureml-core's workspace discovery is impractical to fake over HTTP.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from shared.backends.azureml_v1 import (
    KEY_TAG,
    AzureMLv1Workspace,
    azureml_errors,
    warn_end_of_support,
    workspace_from_settings,
)
from shared.errors import NotFoundError, ValidationError
from shared.registry.base import (
    METRIC_PREFIX,
    ModelRegistry,
    ModelVersion,
    gate_tags,
    lineage_tags,
    stored_metrics,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.settings import Settings

CHAMPION_TAG = "conveyor.champion"
PREVIOUS_TAG = "conveyor.previous"
PROMOTED_AT_TAG = "conveyor.promoted_at"
SOURCE_TAG = "conveyor.source_model_uri"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_RUN_ARTIFACT = re.compile(r"^azureml://jobs/(?P<run>[^/]+)/outputs/artifacts/paths/(?P<path>.+)$")
_TAG_VALUE_MAX = 5000


def _version_key(model: Any) -> int:
    try:
        return int(model.version)
    except (TypeError, ValueError):
        return 0


class AzureMLv1Registry(AzureMLv1Workspace, ModelRegistry):
    def __init__(
        self,
        workspace: Any | None = None,
        *,
        sdk: Any | None = None,
        workspace_factory: Callable[[], Any] | None = None,
    ) -> None:
        warn_end_of_support("the model registry")
        self._init_workspace(workspace, sdk, workspace_factory)

    @classmethod
    def from_settings(cls, settings: Settings, workspace: Any | None = None) -> AzureMLv1Registry:
        return cls(workspace, workspace_factory=lambda: workspace_from_settings(settings))

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _to_model_version(model: Any) -> ModelVersion:
        tags = {str(k): "" if v is None else str(v) for k, v in (model.tags or {}).items()}
        metrics = stored_metrics(model.properties or {})
        return ModelVersion(
            name=str(model.name),
            version=str(model.version),
            source_uri=f"azureml:{model.name}:{model.version}",
            metrics=metrics,
            tags=tags,
        )

    def _model(self, name: str, version: str) -> Any:
        try:
            number = int(str(version))
        except ValueError:
            raise ValidationError(f"v1 model versions are integers, got {version!r}", field="params.version") from None
        with azureml_errors(f"model {name} version {version}"):
            return self.sdk.Model(self.workspace, name=name, version=number)

    def _list(self, name: str | None, tags: list[list[str]]) -> list[Any]:
        with azureml_errors(f"list models {name or ''} {tags}"):
            return list(self.sdk.Model.list(self.workspace, name=name, tags=tags, expand=False))

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name or ""):
            raise ValidationError(f"invalid model name {name!r}", field="params.model_name")

    # ------------------------------------------------------------ port

    def find_by_key(self, key: str, name: str | None = None) -> ModelVersion | None:
        found = self._list(name, [[KEY_TAG, key]])
        found = [m for m in found if (m.tags or {}).get(KEY_TAG) == key and (name is None or m.name == name)]
        if not found:
            return None
        return self._to_model_version(min(found, key=_version_key))

    def register(
        self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str
    ) -> ModelVersion:
        self._check_name(name)
        if not key:
            raise ValidationError("is empty", field="key")
        existing = self.find_by_key(key, name)
        if existing is not None:
            return existing
        clean_tags = lineage_tags(tags, _TAG_VALUE_MAX)
        framework = clean_tags.pop("model_framework", None)
        framework_version = clean_tags.pop("model_framework_version", None)
        all_tags = {**clean_tags, KEY_TAG: key, SOURCE_TAG: str(model_uri)[:_TAG_VALUE_MAX]}
        properties = {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
        description = f"registered by Conveyor ({tags.get('conveyor.flow') or 'flow'}, key {key})"
        kwargs: dict[str, Any] = {"tags": all_tags, "properties": properties, "description": description}
        if framework:
            kwargs["model_framework"] = framework
            if framework_version:
                kwargs["model_framework_version"] = framework_version
        artifact = _RUN_ARTIFACT.match(model_uri or "")
        if artifact:
            run_id, path = artifact.group("run"), artifact.group("path").rstrip("/")
            with azureml_errors(f"register {name} from run {run_id}"):
                run = self.sdk.Run.get(self.workspace, run_id)
                created = run.register_model(model_name=name, model_path=path, **kwargs)
        else:
            local = _local_path(model_uri)
            with azureml_errors(f"register {name} from {local}"):
                created = self.sdk.Model.register(self.workspace, str(local), name, **kwargs)
        winner = self.find_by_key(key, name)
        return winner if winner is not None else self._to_model_version(created)

    def get(self, name: str, version: str) -> ModelVersion:
        return self._to_model_version(self._model(name, version))

    def champion(self, name: str) -> ModelVersion | None:
        return self._flagged(name, CHAMPION_TAG)

    def previous(self, name: str) -> ModelVersion | None:
        """The version that was champion before the current one."""
        return self._flagged(name, PREVIOUS_TAG)

    def _flagged(self, name: str, tag: str) -> ModelVersion | None:
        found = [m for m in self._list(name, [[tag, "true"]]) if (m.tags or {}).get(tag) == "true"]
        if not found:
            return None

        def order(m: Any) -> tuple[float, int]:
            try:
                at = float((m.tags or {}).get(PROMOTED_AT_TAG) or 0)
            except ValueError:
                at = 0.0
            return (at, _version_key(m))

        return self._to_model_version(max(found, key=order))

    def promote(self, name: str, version: str) -> None:
        version = str(version)
        target = self._model(name, version)  # NotFoundError before anything moves
        current = self.champion(name)
        if current is not None and current.version == version:
            return
        older = self.previous(name)
        with azureml_errors(f"promote {name} v{version}"):
            target.update_tags_properties(
                add_tags={CHAMPION_TAG: "true", PROMOTED_AT_TAG: repr(time.time())}, remove_tags=[PREVIOUS_TAG]
            )
        if current is not None:
            old = self._model(name, current.version)
            with azureml_errors(f"demote {name} v{current.version}"):
                old.update_tags_properties(add_tags={PREVIOUS_TAG: "true"}, remove_tags=[CHAMPION_TAG])
        if older is not None and older.version not in (version, current.version if current else None):
            with azureml_errors(f"clear previous on {name} v{older.version}"):
                self._model(name, older.version).update_tags_properties(remove_tags=[PREVIOUS_TAG])

    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        tags = gate_tags(decision, _TAG_VALUE_MAX)
        model = self._model(name, version)
        with azureml_errors(f"record gate decision on {name} v{version}"):
            model.add_tags(tags)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (the console, the CLI)."""
        return sorted((self._to_model_version(m) for m in self._list(name, [])), key=lambda m: int(m.version))

    def model_names(self) -> list[str]:
        """Every registered model's name in the workspace, sorted."""
        return sorted({str(m.name) for m in self._list(None, [])})


def _local_path(model_uri: str, field: str = "params.model_uri") -> Path:
    if not model_uri or not model_uri.strip():
        raise ValidationError("is empty", field=field)
    parsed = urlparse(model_uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "":
        path = Path(model_uri)
    else:
        raise ValidationError(
            "the v1 registry takes azureml://jobs/<run id>/outputs/artifacts/paths/<path> (a run's artifacts) "
            f"or a local path, got {parsed.scheme}://",
            field=field,
        )
    path = path.expanduser().resolve()
    if not path.exists():
        raise NotFoundError(f"no such model file or folder: {str(path)!r}", service="azureml-v1")
    return path
