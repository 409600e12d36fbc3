"""The one place Azure credentials are built (lazily: azure.identity is not light).

In Azure the function app's managed identity is used through DefaultAzureCredential;
``CONVEYOR_MANAGED_IDENTITY_CLIENT_ID`` (or a connection's ``__clientId``) picks a
user-assigned identity. No keys are required anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


class StorageTarget:
    """How a storage adapter connects: a connection string, or a service URI + identity."""

    __slots__ = ("client_id", "connection_string", "endpoint")

    def __init__(
        self, connection_string: str | None = None, endpoint: str | None = None, client_id: str | None = None
    ) -> None:
        self.connection_string = connection_string
        self.endpoint = endpoint
        self.client_id = client_id

    @property
    def identity(self) -> bool:
        return self.endpoint is not None

    def __repr__(self) -> str:  # never print a connection string: it may hold a key
        how = f"endpoint={self.endpoint!r}" if self.identity else "connection_string=<set>"
        return f"StorageTarget({how})"


def storage_target(settings: Settings, service: str, port: str) -> StorageTarget:
    """Where the ``port`` adapter (store|blobs|queue) finds its ``service`` (table|blob|queue).

    1. ``CONVEYOR_STORAGE_CONNECTION`` set → that connection string (``UseDevelopmentStorage=true``
       → Azurite on the configured ports);
    2. else ``CONVEYOR_STORAGE__<service>ServiceUri`` / ``__accountName`` set → identity-based:
       the service URI with the app's token credential (``__clientId`` picks the identity);
    3. else in azure mode for ``port``: ``AzureWebJobsStorage`` if it is a connection string,
       otherwise a ValidationError naming ``CONVEYOR_STORAGE__accountName``;
    4. else (local) → today's behaviour: ``settings.connection_string`` (Azurite by default).
    """
    conn = settings.azure.storage
    if conn.connection_string:
        return StorageTarget(
            connection_string=settings.with_overrides(storage_connection=conn.connection_string).connection_string
        )
    uri = conn.service_uri(service)
    if uri:
        return StorageTarget(endpoint=uri, client_id=conn.client_id)
    if settings.adapter(port) == "azure" and not settings.storage_connection:
        from shared.errors import ValidationError

        raise ValidationError(
            "is required in azure mode (identity-based storage account name; or set CONVEYOR_STORAGE_CONNECTION)",
            field="CONVEYOR_STORAGE__accountName",
        )
    return StorageTarget(connection_string=settings.connection_string)


def client_options(settings: Settings, service: str, client_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword options of one storage client: shared.transport's (with injected faults when
    the settings ask for them), then ``client_kwargs`` (retries, TLS in tests)."""
    from shared.faults import FaultInjector
    from shared.transport import transport_kwargs

    faults = FaultInjector.from_settings(settings)
    return {**transport_kwargs(faults=faults, service=service), **(client_kwargs or {})}


def storage_clients(
    settings: Settings,
    service: str,
    port: str,
    sdk_class: Any,
    *,
    credential: Any = None,
    client_kwargs: Mapping[str, Any] | None = None,
    endpoint_arg: str = "account_url",
) -> Callable[..., Any]:
    """A maker of Azure Storage SDK clients (``sdk_class``) for the ``port`` adapter's ``service``.

    :func:`storage_target` decides once: the maker builds
    ``sdk_class.from_connection_string(conn, **args)``, or
    ``sdk_class(<endpoint_arg>=service URI, credential=the app's identity, **args)``; the
    credential is resolved once for every client it makes. Transport options are read once
    (:mod:`shared.transport`); ``client_kwargs`` (retries, TLS in tests) override them.
    """
    target = storage_target(settings, service, port)

    def kwargs() -> dict[str, Any]:  # per client: a faulty transport is one client's own
        return client_options(settings, service, client_kwargs)

    if target.endpoint is None:
        conn = target.connection_string or settings.connection_string

        def from_connection_string(**args: Any) -> Any:
            return sdk_class.from_connection_string(conn, **args, **kwargs())

        return from_connection_string
    endpoint = {endpoint_arg: target.endpoint}
    cred = credential if credential is not None else get_credential(settings, target.client_id)

    def with_identity(**args: Any) -> Any:
        return sdk_class(**endpoint, credential=cred, **args, **kwargs())

    return with_identity
