"""build_telemetry picks the exporter the settings ask for; App Insights settings are validated.

No exporter is built for real here (that needs the network: tests/functional/azure/telemetry);
the exporters' constructors are replaced by recorders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.errors import ValidationError
from shared.settings import Settings
from shared.telemetry import appinsights
from shared.telemetry.factory import build_telemetry, exporter_name
from shared.telemetry.local import LocalTelemetry
from shared.telemetry.opencensus_exporter import OpenCensusAppInsights
from shared.telemetry.opentelemetry_exporter import OpenTelemetryAppInsights

CS = "InstrumentationKey=11111111-2222-3333-4444-555555555555;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Replace both exporters' constructors; record (exporter, connection string, kwargs)."""
    calls: list[tuple[str, str | None, dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        def init(self: Any, connection_string: str | None = None, **kwargs: Any) -> None:
            calls.append((name, connection_string, kwargs))

        return init

    monkeypatch.setattr(OpenTelemetryAppInsights, "__init__", recorder("opentelemetry"))
    monkeypatch.setattr(OpenCensusAppInsights, "__init__", recorder("opencensus"))
    return calls


def env(**values: str) -> Settings:
    return Settings.from_env({"CONVEYOR_HOME": "/tmp/conveyor-unit", **values})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "local"),
        ({"CONVEYOR_MODE": "azure"}, "opentelemetry"),
        ({"CONVEYOR_MODE": "azure", "CONVEYOR_ADAPTER_TELEMETRY": "local"}, "local"),
        ({"CONVEYOR_ADAPTER_TELEMETRY": "azure"}, "opentelemetry"),
        ({"CONVEYOR_MODE": "azure", "CONVEYOR_TELEMETRY_EXPORTER": "opencensus"}, "opencensus"),
        ({"CONVEYOR_MODE": "azure", "CONVEYOR_TELEMETRY_EXPORTER": "local"}, "local"),
        ({"CONVEYOR_TELEMETRY_EXPORTER": " OpenTelemetry "}, "opentelemetry"),
        ({"CONVEYOR_TELEMETRY_EXPORTER": ""}, "local"),
    ],
)
def test_exporter_per_settings(values: dict[str, str], expected: str) -> None:
    assert exporter_name(env(**values)) == expected


@pytest.mark.parametrize("exporter", ["opentelemetry", "opencensus"])
def test_factory_builds_the_chosen_exporter(built: list[Any], exporter: str) -> None:
    tel = build_telemetry(
        env(CONVEYOR_MODE="azure", CONVEYOR_TELEMETRY_EXPORTER=exporter, APPLICATIONINSIGHTS_CONNECTION_STRING=CS)
    )
    expected = OpenTelemetryAppInsights if exporter == "opentelemetry" else OpenCensusAppInsights
    assert type(tel) is expected
    assert built == [(exporter, CS, {})]  # no credential: the connection string's key is used


def test_azure_mode_defaults_to_opentelemetry(built: list[Any]) -> None:
    tel = build_telemetry(env(CONVEYOR_MODE="azure", APPLICATIONINSIGHTS_CONNECTION_STRING=CS))
    assert isinstance(tel, OpenTelemetryAppInsights)
    assert [c[0] for c in built] == ["opentelemetry"]


def test_local_unchanged(tmp_path: Path, built: list[Any]) -> None:
    tel = build_telemetry(Settings(home=tmp_path, appinsights_connection_string=CS))
    assert isinstance(tel, LocalTelemetry) and tel.home == tmp_path
    assert built == []


@pytest.mark.parametrize("exporter", ["opentelemetry", "opencensus"])
@pytest.mark.parametrize("connection_string", [None, "", "   "])
def test_exporters_need_a_connection_string(
    tmp_path: Path, built: list[Any], exporter: str, connection_string: str | None
) -> None:
    settings = Settings(
        mode="azure", home=tmp_path, telemetry_exporter=exporter, appinsights_connection_string=connection_string
    )
    with pytest.raises(ValidationError) as err:
        build_telemetry(settings)
    assert err.value.field == "APPLICATIONINSIGHTS_CONNECTION_STRING"
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in str(err.value)
    assert built == []


@pytest.mark.parametrize(
    "bad",
    [
        "IngestionEndpoint=https://x.in.applicationinsights.azure.com/",
        "just-a-guid-11111111-2222",
        "InstrumentationKey=;IngestionEndpoint=https://x/",
    ],
)
def test_malformed_connection_string_is_named_not_echoed(tmp_path: Path, built: list[Any], bad: str) -> None:
    settings = Settings(mode="azure", home=tmp_path, appinsights_connection_string=bad)
    with pytest.raises(ValidationError) as err:
        build_telemetry(settings)
    assert err.value.field == "APPLICATIONINSIGHTS_CONNECTION_STRING"
    assert bad not in str(err.value)


def test_unknown_exporter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        build_telemetry(Settings(home=tmp_path, telemetry_exporter="zipkin"))
    assert err.value.field == "CONVEYOR_TELEMETRY_EXPORTER"
    assert "zipkin" in err.value.message


@pytest.mark.parametrize("exporter", ["opentelemetry", "opencensus"])
@pytest.mark.parametrize(
    ("auth", "client_id"), [("Authorization=AAD", None), ("authorization=aad;ClientId=0000-cid", "0000-cid")]
)
def test_entra_id_ingestion_uses_the_app_identity(
    monkeypatch: pytest.MonkeyPatch, built: list[Any], exporter: str, auth: str, client_id: str | None
) -> None:
    asked: list[str | None] = []
    credential = object()

    def fake_get_credential(settings: Settings, cid: str | None = None) -> object:
        asked.append(cid)
        return credential

    monkeypatch.setattr("shared.azure_identity.get_credential", fake_get_credential)
    settings = env(
        CONVEYOR_MODE="azure",
        CONVEYOR_TELEMETRY_EXPORTER=exporter,
        APPLICATIONINSIGHTS_CONNECTION_STRING=CS,
        APPLICATIONINSIGHTS_AUTHENTICATION_STRING=auth,
    )
    build_telemetry(settings)
    assert asked == [client_id]
    assert built == [(exporter, CS, {"credential": credential})]


@pytest.mark.parametrize("auth", ["Authorization=ikey", "AAD", "ClientId=abc"])
def test_bad_authentication_string_is_named(built: list[Any], auth: str) -> None:
    settings = env(
        CONVEYOR_MODE="azure", APPLICATIONINSIGHTS_CONNECTION_STRING=CS, APPLICATIONINSIGHTS_AUTHENTICATION_STRING=auth
    )
    with pytest.raises(ValidationError) as err:
        build_telemetry(settings)
    assert err.value.field == "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
    assert built == []


def test_dimensions_run_flow_step_first_scrubbed_and_strings() -> None:
    dims = appinsights.dimensions(
        "r1",
        {
            "attempt": 2,
            "step": "train",
            "flow": "retrain",
            "ok": True,
            "outputs": {"uri": "abfss://x/y", "token": "t0k"},
            "client_secret": "s3cr3t",
            "sas": "https://a.blob.core.windows.net/c/b?sv=1&sig=abc",
            "none": None,
        },
    )
    assert list(dims)[:3] == ["run_id", "flow", "step"]
    assert dims == {
        "run_id": "r1",
        "flow": "retrain",
        "step": "train",
        "attempt": "2",
        "ok": "true",
        "outputs": '{"uri": "abfss://x/y"}',
        "sas": "[redacted]",
    }
    assert appinsights.dimensions(None, None) == {}
    assert appinsights.dimensions("r2", {"run_id": "other"})["run_id"] == "r2"
    assert len(appinsights.dimensions("r", {"big": "x" * 10_000})["big"]) == appinsights.MAX_VALUE


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("trigger", True),
        ("trigger.blob", True),
        ("run.start", True),
        ("Run", True),
        ("step.launch", False),
        ("step.poll", False),
        ("runner.x", False),
        ("triggered", False),
    ],
)
def test_requests_are_units_of_work(name: str, request_: bool) -> None:
    assert appinsights.is_request(name) is request_
