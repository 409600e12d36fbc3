"""The ModelRegistry port."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


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
