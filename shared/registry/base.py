"""The ModelRegistry port."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import PermanentError

METRIC_PREFIX = "metric."  # a version's metrics are stored as tags/properties metric.<name>
GATE_PREFIX = "gate."  # a gate decision is stored as version tags gate.<key>


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    source_uri: str  # where the registry keeps the artifact (loadable by the deployer)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class ModelRegistry(ABC):
    @abstractmethod
    def register(
        self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str
    ) -> ModelVersion:
        """Register ``model_uri`` as a new version with lineage ``tags``.

        Idempotent on ``key`` (the step's idempotency key): registering the same key twice
        returns the version the first call made.
        """

    @abstractmethod
    def get(self, name: str, version: str) -> ModelVersion: ...

    @abstractmethod
    def champion(self, name: str) -> ModelVersion | None:
        """The version currently holding the champion alias, if any."""

    @abstractmethod
    def promote(self, name: str, version: str) -> None:
        """Move the champion alias to ``version`` (the previous one is kept as 'previous')."""

    @abstractmethod
    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        """Tag a version with the gate's decision (promoted or rejected, and why)."""

    def find_by_key(self, key: str, name: str | None = None) -> ModelVersion | None:
        """The version a ``register`` call with idempotency ``key`` made, or None.

        Lets the register step answer ``poll(key)`` after a restart. Adapters that cannot
        search by tag may keep the default (None: "not registered").
        """
        return None

    # ------------------------------------------------------------ listing (the console, the CLI)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first; [] when there is no such model."""
        raise PermanentError(f"{type(self).__name__} cannot list model versions", service="registry")

    def model_names(self) -> list[str]:
        """The names of every registered model, sorted."""
        raise PermanentError(f"{type(self).__name__} cannot list registered models", service="registry")

    def previous(self, name: str) -> ModelVersion | None:
        """The version that held the champion alias before the current one, if any."""
        raise PermanentError(f"{type(self).__name__} does not keep the previous champion", service="registry")


# ---------------------------------------------------------------- what the adapters store, the same way


def lineage_tags(tags: Mapping[str, Any], max_len: int | None = None) -> dict[str, str]:
    """Lineage tags as stored on a version: values as strings (cut to ``max_len``), None and empty ones left out."""
    return {str(k): str(v)[:max_len] for k, v in tags.items() if v is not None and str(v) != ""}


def gate_tags(decision: Mapping[str, Any], max_len: int | None = None) -> dict[str, str]:
    """A gate decision as version tags: each key under ``gate.`` (once), values as strings (None -> "")."""
    return {
        (k if k.startswith(GATE_PREFIX) else f"{GATE_PREFIX}{k}"): ("" if v is None else str(v)[:max_len])
        for k, v in decision.items()
    }


def stored_metrics(values: Mapping[Any, Any]) -> dict[str, float]:
    """The ``metric.<name>`` entries of a version's tags or properties as ``{name: float}``; unparsable ones skipped."""
    metrics: dict[str, float] = {}
    for k, v in values.items():
        if str(k).startswith(METRIC_PREFIX):
            with contextlib.suppress(TypeError, ValueError):
                metrics[str(k)[len(METRIC_PREFIX) :]] = float(v)
    return metrics
