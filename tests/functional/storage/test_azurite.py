"""The Azurite launcher and the azure-core error mapping shared by the storage adapters."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from azure.core import exceptions as az

from shared.azure_errors import map_azure_error
from shared.errors import (
    AuthError,
    BadRequestError,
    ConcurrencyError,
    ConflictError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from shared.local.azurite import Azurite, AzuriteError, ensure_azurite, free_port, port_open
from shared.settings import Settings


def test_session_azurite_is_reused_not_restarted(azurite_settings: Settings) -> None:
    assert ensure_azurite(azurite_settings) is None


def test_ensure_azurite_refuses_half_taken_ports(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        settings = Settings(
            root=tmp_path,
            home=tmp_path,
            azurite_blob_port=taken,
            azurite_queue_port=free_port(),
            azurite_table_port=free_port(),
        )
        with pytest.raises(AzuriteError, match=str(taken)):
            ensure_azurite(settings)


def test_missing_node_modules_says_how_to_fix(tmp_path: Path) -> None:
    azurite = Azurite(
        tmp_path / "data", blob_port=free_port(), queue_port=free_port(), table_port=free_port(), root=tmp_path
    )
    with pytest.raises(AzuriteError, match="make install"):
        azurite.start()
    assert not azurite.is_running()


def test_ensure_azurite_starts_and_stops_one(tmp_path: Path) -> None:
    ports = {free_port() for _ in range(3)}
    while len(ports) < 3:
        ports.add(free_port())
    blob, queue, table = sorted(ports)
    settings = Settings(
        root=Path(__file__).resolve().parents[3],
        home=tmp_path,
        azurite_blob_port=blob,
        azurite_queue_port=queue,
        azurite_table_port=table,
    )
    azurite = ensure_azurite(settings)
    assert azurite is not None
    try:
        assert azurite.is_running()
        assert all(port_open("127.0.0.1", p) for p in (blob, queue, table))
        assert (tmp_path / "azurite" / "azurite.log").exists()
    finally:
        azurite.stop()
    assert not azurite.is_running()
    assert not any(port_open("127.0.0.1", p) for p in (blob, queue, table))


def _http_error(
    status: int, code: str | None = None, cls: type[az.HttpResponseError] = az.HttpResponseError
) -> Exception:
    exc = cls(message=f"status {status}")
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_http_error(429), ThrottledError),
        (_http_error(503, "ServerBusy"), ThrottledError),
        (_http_error(503), TransientError),
        (_http_error(500), TransientError),
        (_http_error(412, cls=az.ResourceModifiedError), ConcurrencyError),
        (_http_error(403), AuthError),
        (_http_error(404, cls=az.ResourceNotFoundError), NotFoundError),
        (_http_error(409, cls=az.ResourceExistsError), ConflictError),
        (_http_error(400), BadRequestError),
        (az.ServiceRequestError("connection refused"), TransientError),
        (az.ServiceResponseTimeoutError("read timed out"), TransientError),
        (az.ClientAuthenticationError("no credential"), AuthError),
        (TimeoutError("slow"), TransientError),
    ],
)
def test_map_azure_error(exc: Exception, expected: type[Exception]) -> None:
    mapped = map_azure_error(exc, "table")
    assert type(mapped) is expected
    assert mapped.service == "table"
    assert str(mapped).startswith("[table] ")
