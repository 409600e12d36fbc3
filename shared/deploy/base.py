"""The Deployer port: serve a model at an endpoint, or one model per partition behind one endpoint.

A *routed* endpoint (many models) serves one champion per partition (a store, a meter, a
well) and routes each scoring row by its partition key column. ``deploy_partition`` swaps one
partition's model and leaves every other partition as it is. An endpoint is either single-model
(``deploy``) or routed (``deploy_partition``), never both. Adapters that cannot serve
partitions keep the defaults below, which refuse with a PermanentError saying so.

Partition values and keys are data (they come from a data file): ``check_partition`` and
``check_partition_key`` bound what they may be, and ``partition_of`` (shared/deploy/scoring/protocol.py) is the
one rule that turns a row's key value into the partition it names (``7``, ``7.0`` and ``"7"``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from shared.deploy.scoring.protocol import partition_of, partition_order
from shared.errors import PermanentError, ValidationError
from shared.registry.base import ModelVersion

__all__ = ["Deployer", "Deployment", "check_partition", "check_partition_key", "partition_of", "partition_order"]

PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,127}$")
PARTITION_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    model_name: str
    version: str
    scoring_url: str
    partition: str | None = None  # set for one partition of a routed endpoint


def check_partition(value: Any, field: str = "params.partition") -> str:
    if not isinstance(value, str) or not PARTITION_RE.match(value):
        raise ValidationError(
            f"a partition is 1-128 of A-Z a-z 0-9 _ . : = - starting with a letter or digit, got {str(value)[:80]!r}",
            field=field,
        )
    return value


def check_partition_key(value: Any, field: str = "params.partition_key") -> str:
    if not isinstance(value, str) or not PARTITION_KEY_RE.match(value):
        raise ValidationError(
            f"a partition key is a column name (A-Z a-z 0-9 _, not starting with a digit), got {str(value)[:80]!r}",
            field=field,
        )
    return value


class Deployer(ABC):
    @abstractmethod
    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        """Serve ``model`` at ``endpoint`` (swap in place when it already serves another)."""

    @abstractmethod
    def current(self, endpoint: str) -> Deployment | None: ...

    @abstractmethod
    def rollback(self, endpoint: str) -> Deployment | None:
        """Serve the version served before the current one again."""

    # ------------------------------------------------------------ routed endpoints (many models)

    def deploy_partition(self, endpoint: str, partition: str, model: ModelVersion, partition_key: str) -> Deployment:
        """Serve ``model`` as ``partition`` of the routed ``endpoint``, whose rows are routed by the
        ``partition_key`` column; the other partitions keep what they serve."""
        raise PermanentError(f"{type(self).__name__} cannot serve partition models (many models)", service="deploy")

    def current_partition(self, endpoint: str, partition: str) -> Deployment | None:
        """What ``partition`` of ``endpoint`` serves, or None."""
        raise PermanentError(f"{type(self).__name__} cannot serve partition models (many models)", service="deploy")

    def partitions(self, endpoint: str) -> dict[str, Deployment]:
        """Every partition ``endpoint`` serves, by partition."""
        raise PermanentError(f"{type(self).__name__} cannot serve partition models (many models)", service="deploy")
