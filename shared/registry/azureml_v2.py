"""ModelRegistry on an Azure ML workspace through azure-ai-ml (SDK v2).

``register`` creates a model version (``ml_client.models.create_or_update(Model(...))``, the
version auto-incremented by the SDK) from the training job's output URI, e.g.
``azureml://jobs/<job>/outputs/model``. The version carries everything the gate and the
deployer need, as tags: the idempotency key ``conveyor.key``, the lineage tags, the metrics as
``metric.<name>`` (and as properties, which Azure ML shows and never changes).

Champion: azure-ai-ml has no model aliases, so the champion is the **version tag**
``conveyor.alias=champion`` (with ``conveyor.promoted_at``, nanoseconds). ``promote`` tags the new
champion first, then moves the old one to ``conveyor.alias=previous`` and clears any older
``previous`` (emptied: ``conveyor.alias=""``). Should a crash leave two versions tagged champion,
``champion()`` answers the one promoted last (highest ``conveyor.promoted_at``), so the outcome
is the same as a finished promotion; the next promotion tidies up. Gate decisions are version tags ``gate.*``.

Tags are changed by reading the version and writing it back with ``models.create_or_update``
(the SDK's documented way to update a version's tags). azure-ai-ml is imported lazily.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.azureml_common import azureml_errors, map_azureml_error
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
    from shared.settings import Settings

ALIAS_TAG = "conveyor.alias"
PROMOTED_AT_TAG = "conveyor.promoted_at"
CHAMPION = "champion"
PREVIOUS = "previous"
KEY_TAG = "conveyor.key"
# Azure ML asset names: letters, digits, '-', '_', '.'; start with a letter or digit; ≤255.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class AzureMLRegistry(ModelRegistry):
    def __init__(self, ml_client: Any, *, model_type: str = "mlflow_model") -> None:
        self.ml_client = ml_client
        self.model_type = model_type
        self._by_key: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, ml_client: Any | None = None) -> AzureMLRegistry:
        if ml_client is None:
            from shared.azureml_common import ml_client_from_settings

            ml_client = ml_client_from_settings(settings)
        return cls(ml_client)

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _to_model_version(model: Any) -> ModelVersion:
        tags = {str(k): "" if v is None else str(v) for k, v in dict(model.tags or {}).items()}
        metrics = stored_metrics(tags)
        return ModelVersion(
            name=str(model.name),
            version=str(model.version),
            source_uri=str(model.path or f"azureml:{model.name}:{model.version}"),
            metrics=metrics,
            tags=tags,
        )

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name or ""):
            raise ValidationError(f"invalid Azure ML model name {name!r}", field="params.model_name")

    def _versions(self, name: str) -> list[Any]:
        """Every version of ``name`` (raw entities); [] when there is no such model."""
        try:
            with azureml_errors(f"list versions of model {name}"):
                return list(self.ml_client.models.list(name=name))
        except NotFoundError:
            return []

    def _get(self, name: str, version: str) -> Any:
        with azureml_errors(f"model {name} version {version}"):
            return self.ml_client.models.get(name=name, version=str(version))

    def _set_tags(self, name: str, version: str, updates: Mapping[str, str | None]) -> Any:
        """Read the version, change its tags (None deletes one), write it back."""
        model = self._get(name, version)
        tags = dict(model.tags or {})
        for k, v in updates.items():
            if v is None:
                tags.pop(k, None)
            else:
                tags[k] = v
        model.tags = tags
        with azureml_errors(f"update tags of model {name} version {version}"):
            return self.ml_client.models.create_or_update(model)

    # ------------------------------------------------------------ port

    def find_by_key(self, key: str, name: str | None = None) -> ModelVersion | None:
        """The version registered with ``key``: lowest version number wins a registration race.

        Without ``name`` every model in the workspace is searched (one list call per model
        name); versions registered by this process are remembered, so that is the exception.
        """
        known = self._by_key.get(key)
        if known is not None and (name is None or known[0] == name):
            with contextlib.suppress(NotFoundError):
                return self._to_model_version(self._get(*known))
        if name is not None:
            names = [name]
        else:
            with azureml_errors("list models"):
                names = sorted({str(m.name) for m in self.ml_client.models.list()})
        for model_name in names:
            hits = [m for m in self._versions(model_name) if dict(m.tags or {}).get(KEY_TAG) == key]
            if hits:
                first = min(hits, key=lambda m: _version_number(m.version))
                self._by_key[key] = (str(first.name), str(first.version))
                return self._to_model_version(first)
        return None

    def register(
        self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str
    ) -> ModelVersion:
        self._check_name(name)
        if not key:
            raise ValidationError("is empty", field="key")
        if not model_uri or not model_uri.strip():
            raise ValidationError("is empty", field="params.model_uri")
        existing = self.find_by_key(key, name)
        if existing is not None:
            return existing
        from azure.ai.ml.entities import Model

        clean_metrics = {str(k): float(v) for k, v in metrics.items()}
        lineage = lineage_tags(tags)
        version_tags = {
            **lineage,
            KEY_TAG: key,
            "conveyor.source_model_uri": model_uri,
            **{f"{METRIC_PREFIX}{k}": repr(v) for k, v in clean_metrics.items()},
        }
        model = Model(
            name=name,
            path=model_uri,
            type=self.model_type,
            description=f"registered by Conveyor run {lineage.get('conveyor.run_id', '')}".strip(),
            tags=version_tags,
            properties={f"{METRIC_PREFIX}{k}": repr(v) for k, v in clean_metrics.items()},
        )
        try:
            created = self.ml_client.models.create_or_update(model)
        except Exception as exc:
            raise map_azureml_error(exc, f"register model {name} from {model_uri}") from exc
        # Two launches racing on one key both create a version: the lowest number wins, always.
        winner = self.find_by_key(key, name)
        if winner is not None:
            return winner
        mv = self._to_model_version(created)
        self._by_key[key] = (mv.name, mv.version)
        return mv

    def get(self, name: str, version: str) -> ModelVersion:
        return self._to_model_version(self._get(name, version))

    def _holders(self, name: str, alias: str) -> list[Any]:
        """Versions tagged ``conveyor.alias=<alias>``, most recently promoted first."""
        found = [m for m in self._versions(name) if dict(m.tags or {}).get(ALIAS_TAG) == alias]
        return sorted(
            found,
            key=lambda m: (_int(dict(m.tags or {}).get(PROMOTED_AT_TAG)), _version_number(m.version)),
            reverse=True,
        )

    def champion(self, name: str) -> ModelVersion | None:
        holders = self._holders(name, CHAMPION)
        return self._to_model_version(holders[0]) if holders else None

    def previous(self, name: str) -> ModelVersion | None:
        """The version that held the champion tag before the current one."""
        holders = self._holders(name, PREVIOUS)
        return self._to_model_version(holders[0]) if holders else None

    def promote(self, name: str, version: str) -> None:
        version = str(version)
        with self._lock:
            self._get(name, version)  # NotFoundError for an unknown version, before any tag moves
            champions = self._holders(name, CHAMPION)
            if champions and str(champions[0].version) == version:
                return  # already champion: promoting twice must not make it its own 'previous'
            # 1. the new champion (wins over any stale one by promoted_at)
            self._set_tags(name, version, {ALIAS_TAG: CHAMPION, PROMOTED_AT_TAG: str(time.time_ns())})
            # 2. the old champion(s) become 'previous', 3. older 'previous' are cleared
            old = champions[0] if champions else None
            for stale in self._holders(name, PREVIOUS):
                if old is None or str(stale.version) != str(old.version):
                    self._set_tags(name, str(stale.version), {ALIAS_TAG: ""})
            for extra in champions[1:]:
                if str(extra.version) != version:
                    self._set_tags(name, str(extra.version), {ALIAS_TAG: ""})
            if old is not None:
                self._set_tags(name, str(old.version), {ALIAS_TAG: PREVIOUS})

    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        self._set_tags(name, str(version), gate_tags(decision))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (the console, the CLI)."""
        found = sorted(self._versions(name), key=lambda m: _version_number(m.version))
        return [self._to_model_version(m) for m in found]

    def model_names(self) -> list[str]:
        """Every model container's name in the workspace, sorted (``models.list()`` without a name)."""
        with azureml_errors("list models"):
            return sorted({str(m.name) for m in self.ml_client.models.list()})


def _version_number(version: Any) -> tuple[int, str]:
    text = str(version)
    return (int(text), text) if text.isdigit() else (-1, text)


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0
