"""Scoring script of Conveyor's many-models deployment on an Azure ML managed online endpoint.

A managed online endpoint holds a handful of deployments (a per-endpoint cap), never one per
store, so the many-models pattern is ONE deployment whose scoring code serves every partition:
each request row is routed by its partition key column, and partition ``p`` is answered by the
champion of the registered model ``<prefix><p>`` in the workspace (e.g. ``sales-forecaster-7``).
The champion is the version tagged ``conveyor.alias=champion`` (the latest ``conveyor.promoted_at``
if a crash left two), the rule of shared/registry/azureml_v2.py: a deploy step that promotes a
partition's candidate moves that tag, and this script serves the new version within
``CONVEYOR_MANY_REFRESH_SECONDS``; a rejected candidate moves nothing, so its partition keeps
its champion. No deployment update is needed per promotion.

Settings (environment variables the deployer puts on the deployment):

  CONVEYOR_MANY_MODEL_PREFIX        the model names' common prefix (``sales-forecaster-``)
  CONVEYOR_MANY_PARTITION_KEY       the column routing each row (``store``)
  CONVEYOR_MANY_ENDPOINT            the endpoint's name (for error messages)
  CONVEYOR_MANY_SUBSCRIPTION_ID, CONVEYOR_MANY_RESOURCE_GROUP, CONVEYOR_MANY_WORKSPACE
                                    the workspace whose registry holds the models
  CONVEYOR_MANY_IDENTITY_CLIENT_ID  a user-assigned identity's client id (default: the
                                    endpoint's system-assigned identity), which needs read
                                    access to the workspace's models
  CONVEYOR_MANY_REFRESH_SECONDS     how long a partition's champion is trusted (60)
  CONVEYOR_MANY_CACHE_MODELS        loaded models kept in memory, least recently used out (200)

Requests are MLflow's scoring protocol as the local endpoint speaks it (protocol.py, shipped
next to this file): ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs`` or
``rows``, with ``params.partition`` for rows without the key column. The answer is
``{"predictions", "partitions", "models"}`` as locally; an unknown partition is a 404
``unknown_partition`` naming it and its cell, other bad input a 400 naming the field.

A model is fetched with ``MLClient.models.download`` into a local folder and loaded with
``mlflow.pyfunc.load_model``; the models are the workspace's own registered versions, which
only the app's register step writes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # imported as shared.deploy.scoring.azureml_score (the deployer, the tests)
    from . import protocol
except ImportError:  # the deployment's scoring script: its code folder is the working directory
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import protocol  # type: ignore[no-redef]

ALIAS_TAG = "conveyor.alias"
PROMOTED_AT_TAG = "conveyor.promoted_at"
CHAMPION = "champion"


def champion_version(models: Any) -> str | None:
    """The champion among a registered model's versions (see the module docstring), or None."""
    best: tuple[int, int] | None = None
    version: str | None = None
    for model in models or []:
        tags = dict(getattr(model, "tags", None) or {})
        if tags.get(ALIAS_TAG) != CHAMPION:
            continue
        try:
            promoted = int(tags.get(PROMOTED_AT_TAG) or 0)
        except ValueError:
            promoted = 0
        try:
            number = int(str(model.version))
        except ValueError:
            number = 0
        if best is None or (promoted, number) > best:
            best, version = (promoted, number), str(model.version)
    return version


def list_versions(client: Any, name: str) -> list[Any]:
    """Every version of the registered model ``name``; none when there is no such model."""
    try:
        return list(client.models.list(name=name))
    except Exception as exc:
        if type(exc).__name__ == "ResourceNotFoundError" or getattr(exc, "status_code", None) == 404:
            return []
        raise


class PartitionModels:
    """Partition -> its champion's loaded model: the champion looked up at most every ``refresh``
    seconds, the models kept in a bounded LRU cache keyed by (name, version)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        refresh: float = 60.0,
        cache_size: int = 200,
        download_root: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.refresh = refresh
        self.cache_size = max(1, cache_size)
        self.download_root = download_root or Path(tempfile.mkdtemp(prefix="conveyor-many-"))
        self.clock = clock
        self._champions: dict[str, tuple[float, str | None]] = {}
        self._models: OrderedDict[tuple[str, str], tuple[Any, protocol.Columns]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}  # one download per model at a time

    def name_of(self, partition: str) -> str:
        return f"{self.prefix}{partition}"

    def champion(self, partition: str) -> str | None:
        now = self.clock()
        seen = self._champions.get(partition)
        if seen is not None and now - seen[0] < self.refresh:
            return seen[1]
        version = champion_version(list_versions(self.client, self.name_of(partition)))
        self._champions[partition] = (now, version)
        return version

    def model(self, partition: str) -> tuple[str, str, Any, protocol.Columns]:
        version = self.champion(partition)
        if version is None:
            raise protocol.RequestError(404, f"no champion for partition {partition!r}", code="unknown_partition")
        name = self.name_of(partition)
        key = (name, version)
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    model, columns = self._models[key]
                    return name, version, model, columns
            model = self._download_and_load(name, version)
            columns = protocol.input_columns(model)
            with self._lock:
                self._models[key] = (model, columns)
                while len(self._models) > self.cache_size:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
        return name, version, model, columns

    def _download_and_load(self, name: str, version: str) -> Any:
        import mlflow.pyfunc

        target = self.download_root / f"{name}-{version}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        self.client.models.download(name=name, version=version, download_path=str(target))
        found = sorted(target.rglob("MLmodel"), key=lambda p: len(p.parts))
        if not found:
            raise protocol.RequestError(503, f"model {name}:{version} holds no MLflow model (no MLmodel file)")
        return mlflow.pyfunc.load_model(str(found[0].parent))


class ManyModelsScorer:
    """One request: rows parsed, routed by ``partition_key``, each group predicted by its champion."""

    def __init__(self, models: PartitionModels, partition_key: str, endpoint: str = "many-models") -> None:
        self.models = models
        self.partition_key = partition_key
        self.endpoint = endpoint

    def score(self, body: Any) -> dict[str, Any]:
        table = protocol.parse_scoring_body(body)

        def served(partition: str) -> bool:
            return self.models.champion(partition) is not None

        def unknown(partition: str, field: str | None) -> protocol.RequestError:
            return protocol.unknown_partition(self.endpoint, partition, field)

        routes = protocol.route_rows(table, self.partition_key, served, unknown)
        groups: dict[str, list[int]] = {}
        for i, partition in enumerate(routes):
            groups.setdefault(partition, []).append(i)
        predictions: list[Any] = [None] * len(routes)
        answered: dict[str, dict[str, Any]] = {}
        for partition, indices in groups.items():
            name, version, model, columns = self.models.model(partition)
            values = protocol.predict_rows(model, columns, table, indices, f"{self.endpoint} partition {partition}")
            for i, value in zip(indices, values, strict=True):
                predictions[i] = value
            answered[partition] = {"model": name, "version": version}
        return {"predictions": predictions, "partitions": routes, "models": answered}

    def handle(self, raw: str | bytes) -> tuple[int, dict[str, Any]]:
        """``(status, JSON document)`` for one request body; never raises."""
        try:
            body = json.loads(raw)
            return 200, self.score(body)
        except ValueError:
            return 400, _error(protocol.RequestError(400, "the body is not JSON", field="body"))
        except protocol.RequestError as err:
            return err.status, _error(err)
        except Exception:
            protocol.log.exception("many-models scoring failed")
            return 500, {"error": {"code": "internal_error", "message": "scoring failed; see the deployment's logs"}}


def _error(err: protocol.RequestError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, "field": err.field}}


def client_from_environment() -> Any:
    """An MLClient for the workspace named by the environment, with the endpoint's managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    client_id = os.environ.get("CONVEYOR_MANY_IDENTITY_CLIENT_ID") or None
    return MLClient(
        ManagedIdentityCredential(client_id=client_id),
        subscription_id=os.environ["CONVEYOR_MANY_SUBSCRIPTION_ID"],
        resource_group_name=os.environ["CONVEYOR_MANY_RESOURCE_GROUP"],
        workspace_name=os.environ["CONVEYOR_MANY_WORKSPACE"],
    )


_scorer: ManyModelsScorer | None = None


def init(client: Any = None) -> None:
    """Azure ML calls this once per worker; tests pass their ``client``."""
    global _scorer
    models = PartitionModels(
        client if client is not None else client_from_environment(),
        os.environ["CONVEYOR_MANY_MODEL_PREFIX"],
        refresh=float(os.environ.get("CONVEYOR_MANY_REFRESH_SECONDS") or 60),
        cache_size=int(os.environ.get("CONVEYOR_MANY_CACHE_MODELS") or 200),
    )
    endpoint = os.environ.get("CONVEYOR_MANY_ENDPOINT") or "many-models"
    _scorer = ManyModelsScorer(models, os.environ["CONVEYOR_MANY_PARTITION_KEY"], endpoint)


def run(raw_data: str) -> Any:
    """Azure ML calls this per request with the body; the answer keeps its status code."""
    if _scorer is None:
        raise RuntimeError("init() was not called")
    status, doc = _scorer.handle(raw_data)
    try:
        from azureml.contrib.services.aml_response import AMLResponse
    except ImportError:  # outside the inference server (tests): the document itself
        return doc if status == 200 else {**doc, "status": status}
    return AMLResponse(json.dumps(doc), status, {"Content-Type": "application/json"}, json_str=True)
