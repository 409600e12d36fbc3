"""The one place Azure credentials are built (lazily: azure.identity is not light).

In Azure the function app's managed identity is used through DefaultAzureCredential;
``CONVEYOR_MANAGED_IDENTITY_CLIENT_ID`` (or a connection's ``__clientId``) picks a
user-assigned identity. No keys are required anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings

_cache: dict[str | None, Any] = {}


def get_credential(settings: Settings, client_id: str | None = None) -> Any:
    """A token credential (azure.core TokenCredential) for the app's identity, one per client id."""
    cid = client_id or settings.azure.managed_identity_client_id
    if cid not in _cache:
        from azure.identity import DefaultAzureCredential

        kwargs: dict[str, Any] = {"exclude_interactive_browser_credential": True}
        if cid:
            kwargs["managed_identity_client_id"] = cid
        _cache[cid] = DefaultAzureCredential(**kwargs)
    return _cache[cid]
