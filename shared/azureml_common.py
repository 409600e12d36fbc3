"""Helpers shared by the Azure ML adapters (v2 azure-ai-ml and v1 azureml-core).

Small and stable on purpose: the v1 adapters import from here too.

- ``ml_client_from_settings``: an ``azure.ai.ml.MLClient`` for the workspace the app settings name
  (``workspace_ids``: that workspace's subscription, resource group and name, for v1 too).
- ``map_azureml_error`` / ``azureml_errors``: azure-ai-ml's own exceptions (``MlException`` and
  subclasses, which derive from azure-core's ``AzureError``) and azure-core HTTP errors into
  Conveyor's error tree, keeping the service's message.
- ``job_state``: an Azure ML job/run status (the same names in v1 and v2) as a ``RemoteState``.
- ``aml_name``: a deterministic Azure ML job name from an idempotency key.
- ``is_already_exists``: does an exception say "that name is taken" (reattach instead of fail).
- ``pipeline_params``: an azureml step's params, and its pipeline job YAML under the project root.

azure.ai.ml / azure.core are imported lazily (cold start).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequestError, ConveyorError, PermanentError, ValidationError

if TYPE_CHECKING:
    from pathlib import Path

    from shared.backends.base import LaunchRequest, RemoteState
    from shared.flows.model import AzureMLParams
    from shared.settings import Settings

SERVICE = "azureml"

# Azure ML job / run statuses (v2 JobStatus and v1 RunStatus share the names).
RUNNING_STATES = frozenset(
    {
        "NotStarted",
        "Queued",
        "Preparing",
        "Starting",
        "Provisioning",
        "Running",
        "Finalizing",
        "CancelRequested",
        "Paused",
        "Unknown",
    }
)
SUCCEEDED_STATES = frozenset({"Completed", "Finished"})
FAILED_STATES = frozenset({"Failed", "NotResponding"})
CANCELLED_STATES = frozenset({"Canceled", "Cancelled"})

_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_MAX_DETAIL = 500


def job_state(status: str | None) -> RemoteState:
    """``Completed`` → succeeded; ``Failed``/``NotResponding`` → failed; ``Canceled`` → cancelled; else running.

    Unknown or missing statuses count as running: the step's timeout bounds them.
    """
    s = str(status or "")
    if s in SUCCEEDED_STATES:
        return "succeeded"
    if s in FAILED_STATES:
        return "failed"
    if s in CANCELLED_STATES:
        return "cancelled"
    return "running"


def aml_name(key: str, max_len: int = 255) -> str:
    """An Azure ML job name (letters, digits, ``_`` ``-``; ≤255) for ``key``, deterministic.

    Keys already in that alphabet (Conveyor's ``run-step-attempt`` keys are) are used as they
    are; anything else is replaced by ``_`` and suffixed with a short hash of the original so
    that two different keys never share a name.
    """
    if _NAME_OK.match(key) and len(key) <= max_len:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", key)[: max_len - len(digest) - 1]
    return f"{clean}-{digest}"


def pipeline_params(request: LaunchRequest, root: Path) -> tuple[AzureMLParams, Path | None]:
    """An azureml step's validated params and the pipeline job YAML they name under ``root`` (checked to be a
    file there); None when ``params.pipeline`` is not set (a v1 published pipeline: each backend says what then)."""
    from shared.backends.commandline import safe_join, validation_error
    from shared.flows.model import AzureMLParams

    try:
        params = AzureMLParams.model_validate(request.params)
    except Exception as exc:
        raise validation_error(exc) from exc
    if not params.pipeline:
        return params, None
    path = safe_join(root, params.pipeline, field="params.pipeline")
    if not path.is_file():
        raise ValidationError(f"no such file under the project root: {params.pipeline!r}", field="params.pipeline")
    return params, path


def workspace_ids(settings: Settings) -> tuple[str, str, str]:
    """(subscription id, resource group, workspace name) of the configured Azure ML workspace, each required."""
    az = settings.azure
    return (
        az.require("azureml_subscription_id", "CONVEYOR_AZUREML_SUBSCRIPTION_ID"),
        az.require("azureml_resource_group", "CONVEYOR_AZUREML_RESOURCE_GROUP"),
        az.require("azureml_workspace", "CONVEYOR_AZUREML_WORKSPACE"),
    )


def ml_client_from_settings(settings: Settings, credential: Any | None = None, **kwargs: Any) -> Any:
    """An ``azure.ai.ml.MLClient`` for CONVEYOR_AZUREML_SUBSCRIPTION_ID / _RESOURCE_GROUP / _WORKSPACE.

    ``credential`` defaults to the app identity (shared.azure_identity.get_credential). Extra
    ``kwargs`` go to MLClient (azure-core pipeline options such as ``retry_total``). Building the
    client makes no request.
    """
    subscription, resource_group, workspace = workspace_ids(settings)
    if credential is None:
        from shared.azure_identity import get_credential

        credential = get_credential(settings)
    from azure.ai.ml import MLClient

    return MLClient(
        credential=credential,
        subscription_id=subscription,
        resource_group_name=resource_group,
        workspace_name=workspace,
        **kwargs,
    )


def _detail(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc or "").strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # ARM-style messages: "(Code) text\nCode: X\nMessage: text" — the first line already has it.
    return lines[0][:_MAX_DETAIL]


def is_already_exists(exc: BaseException) -> bool:
    """Does ``exc`` say the name is already taken (409, ResourceExistsError, "already exists")?"""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    if isinstance(exc, ResourceExistsError):
        return True
    if isinstance(exc, HttpResponseError) and exc.status_code == 409:
        return True
    text = str(getattr(exc, "message", None) or exc).lower()
    return "already exists" in text or "alreadyexists" in text


def map_azureml_error(exc: BaseException, what: str = "", service: str = SERVICE) -> ConveyorError:
    """The Conveyor error for an exception raised by azure-ai-ml (or azureml-core, or azure-core).

    azure-core HTTP errors go through shared.azure_errors.map_azure_error (429/503 → throttled,
    5xx/timeouts → transient, 400 → bad request, 401/403 → auth, 404 → not found, 409 → conflict).
    azure-ai-ml's client-side ``MlException`` family is *not* transient even though it derives from
    ``AzureError``: validation and user errors → BadRequestError, anything else → PermanentError.
    ``what`` prefixes the message ("create job x: ..."); the service's own text is kept.
    """
    if isinstance(exc, ConveyorError):
        return exc
    from azure.core.exceptions import AzureError, HttpResponseError

    from shared.azure_errors import map_azure_error

    prefix = f"{what}: " if what else ""
    mapped: ConveyorError
    ml_exc = _ml_exception_type()
    if ml_exc is not None and isinstance(exc, ml_exc) and not isinstance(exc, HttpResponseError):
        category = str(getattr(exc, "error_category", "") or "")
        detail = _detail(exc)
        if category == "SystemError":
            mapped = PermanentError(f"{prefix}{type(exc).__name__}: {detail}", service=service)
        else:
            mapped = BadRequestError(f"{prefix}{detail}", service=service, status=400)
        return mapped
    if isinstance(exc, AzureError | TimeoutError | ConnectionError):
        base = map_azure_error(exc, service)
        base.message = f"{prefix}{base.message}"
        return base
    return PermanentError(f"{prefix}{type(exc).__name__}: {_detail(exc)}", service=service)


def _ml_exception_type() -> type[BaseException] | None:
    try:
        from azure.ai.ml.exceptions import MlException
    except ImportError:  # azureml-core only installs
        return None
    return MlException


@contextlib.contextmanager
def azureml_errors(what: str = "", service: str = SERVICE) -> Iterator[None]:
    """Re-raise anything from the Azure ML SDKs inside the block as a Conveyor error."""
    try:
        yield
    except ConveyorError:
        raise
    except Exception as exc:
        raise map_azureml_error(exc, what, service) from exc
