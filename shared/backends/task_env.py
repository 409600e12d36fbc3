"""What a task process sees in its environment: an allow-list, never the host's settings.

A task (a Batch task, the Databricks entry, an Azure ML command) runs code a flow names on
data from outside, so its environment is built, not inherited. From the host it gets only
PATH (with this interpreter's bin dir first, so ``python`` is the project's), HOME, TMPDIR,
TZ and the locale (LANG, LANGUAGE, LC_*). Then what the step declares in ``env:``. Then the
task's own values, which win: ``CONVEYOR_TASK_*`` and the ids the real service would set
(``AZ_BATCH_*``, ``DATABRICKS_RUN_ID``, ``AZUREML_*``, ``TRACEPARENT``). Nothing else of the
host reaches a task: not its CONVEYOR_* settings, AZURE_* credentials, connection strings or
the DevOps hook's secrets.

Storage: a task that reads blobs itself (the Databricks entry, as a cluster would through its
own identity) gets ``CONVEYOR_TASK_STORAGE_SAS``, a read/list account SAS that expires,
derived from the account key of the local connection string (locally the Azurite dev
account); never the key or the connection string.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from shared.settings import AZURITE_ACCOUNT, AZURITE_KEY

__all__ = ["HOST_VARS", "TASK_PREFIX", "base_env", "storage_sas", "task_env"]

HOST_VARS = ("PATH", "HOME", "TMPDIR", "TZ", "LANG", "LANGUAGE")
HOST_PREFIXES = ("LC_",)
TASK_PREFIX = "CONVEYOR_TASK_"
SAS_HOURS = 12.0  # a local task's storage SAS lives this long (local steps time out sooner)


def base_env(host: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``host`` (default os.environ), this interpreter's bin dir first on PATH."""
    src = os.environ if host is None else host
    env = {k: v for k, v in src.items() if k in HOST_VARS or k.startswith(HOST_PREFIXES)}
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH") or os.defpath
    if bindir and bindir not in path.split(os.pathsep):
        path = bindir + os.pathsep + path
    env["PATH"] = path
    return env


def task_env(
    own: Mapping[str, str], declared: Mapping[str, str] | None = None, host: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A task's whole environment: :func:`base_env`, then the step's ``declared`` env, then its ``own`` values."""
    env = base_env(host)
    env.update(declared or {})
    env.update(own)
    return env


def storage_sas(connection_string: str, *, hours: float = SAS_HOURS, now: datetime | None = None) -> str | None:
    """A read/list account SAS for the account of ``connection_string``; None when it holds no
    account key (an identity or SAS connection: nothing a task may be handed)."""
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        parts.update(AccountName=AZURITE_ACCOUNT, AccountKey=AZURITE_KEY)
    name, key = parts.get("AccountName"), parts.get("AccountKey")
    if not name or not key:
        return None
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    start = now or datetime.now(UTC)
    return generate_account_sas(
        name,
        key,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True),
        expiry=start + timedelta(hours=hours),
        start=start - timedelta(minutes=5),
    )
