"""The Deployer port."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from shared.registry.base import ModelVersion


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    model_name: str
    version: str
    scoring_url: str


class Deployer(ABC):
    @abstractmethod
    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        """Serve ``model`` at ``endpoint`` (swap in place when it already serves another)."""

    @abstractmethod
    def current(self, endpoint: str) -> Deployment | None: ...

    @abstractmethod
    def rollback(self, endpoint: str) -> Deployment | None:
        """Serve the version served before the current one again."""
