"""host.json and local.settings.sample.json stay in step with the code that reads them."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from shared.settings import PORTS, Settings

ROOT = Path(__file__).resolve().parents[3]
SETTING_NAME = re.compile(r"CONVEYOR_[A-Z0-9_]+|AzureWebJobsStorage|APPLICATIONINSIGHTS_[A-Z_]+")
SETTING_NAME = re.compile(r"CONVEYOR_[A-Z0-9_]+|AzureWebJobsStorage|APPLICATIONINSIGHTS_[A-Z_]+")


def load(name: str) -> Any:
    return json.loads((ROOT / name).read_text(encoding="utf-8"))


def env_names_read_by_settings() -> set[str]:
    """Every app-setting name shared/settings.py reads, found in its source (not its behaviour)."""
    source = (ROOT / "shared" / "settings.py").read_text(encoding="utf-8")
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        # env.get("NAME", ...) and _int(env, "NAME", ...)
        if isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and SETTING_NAME.fullmatch(arg.value):
                    names.add(arg.value)
    # The per-port overrides are built with an f-string: CONVEYOR_ADAPTER_{port.upper()}.
    assert 'f"CONVEYOR_ADAPTER_{port.upper()}"' in source
    names.update(f"CONVEYOR_ADAPTER_{p.upper()}" for p in PORTS)
    return names


def test_parser_finds_the_settings_it_should() -> None:
    names = env_names_read_by_settings()
    # A few names picked by hand, so a broken parser cannot pass by finding nothing.
    assert {"CONVEYOR_MODE", "CONVEYOR_QUEUE_NAME", "CONVEYOR_DEVOPS_SECRET", "CONVEYOR_ADAPTER_BATCH"} <= names
    assert len(names) > 25


def test_every_setting_read_is_in_the_sample() -> None:
    values = load("local.settings.sample.json")["Values"]
    # An identity-based connection (IdentityConnection.read(env, "NAME")) is read as NAME__<part>.
    missing = sorted(
        name
        for name in env_names_read_by_settings() - set(values)
        if not any(key.startswith(f"{name}__") for key in values)
    )
    assert not missing, f"add to local.settings.sample.json Values (and ConveyorSettingsHelp): {missing}"


def test_every_sample_value_is_explained_in_one_line() -> None:
    doc = load("local.settings.sample.json")
    assert doc["IsEncrypted"] is False
    values, help_ = doc["Values"], doc["ConveyorSettingsHelp"]
    assert set(values) == set(help_)
    for name, text in help_.items():
        assert isinstance(text, str) and text.strip() and "\n" not in text, name
    assert all(isinstance(v, str) for v in values.values()), "Functions app settings are strings"


def test_sample_has_the_functions_basics_and_binding_settings() -> None:
    values = load("local.settings.sample.json")["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert "EnableWorkerIndexing" in values["AzureWebJobsFeatureFlags"]
    assert values["CONVEYOR_SCHEDULE_TICK"] == "0 * * * * *"
    assert "ServiceBusConnection" in values
    # %NAME% placeholders in the bindings resolve from app settings.
    for module in ("schedules", "orchestrator", "operations"):
        source = (ROOT / "functions" / f"{module}.py").read_text(encoding="utf-8")
        for placeholder in re.findall(r"%([A-Za-z0-9_]+)%", source):
            assert placeholder in values, (module, placeholder)


def test_sample_values_load_as_settings() -> None:
    """The sample, used as is, is a valid configuration (no blank that breaks parsing)."""
    values = load("local.settings.sample.json")["Values"]
    s = Settings.from_env(values)
    assert s.mode == "local"
    assert s.queue_name == values["CONVEYOR_QUEUE_NAME"]
    assert s.devops_secret_header == "X-Conveyor-Secret"
    assert s.adapters == {}
    assert s.telemetry_exporter == "local"


def test_sample_holds_no_secret_values() -> None:
    values = load("local.settings.sample.json")["Values"]
    for name in ("CONVEYOR_DEVOPS_PASSWORD", "CONVEYOR_DEVOPS_SECRET", "ServiceBusConnection"):
        assert values[name] == "", name
    assert not any("AccountKey=" in v or "SharedAccessKey=" in v for v in values.values())


def test_host_json() -> None:
    host = load("host.json")
    assert host["version"] == "2.0"
    bundle = host["extensionBundle"]
    assert bundle["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    assert bundle["version"] == "[4.*, 5.0.0)"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", host["functionTimeout"])
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert "Request" in sampling["excludedTypes"]
    assert host["extensions"]["http"]["routePrefix"] == "api"
    bus = host["extensions"]["serviceBus"]
    # Bundle 4.x carries the Service Bus extension 5.x: flat options (messageHandlerOptions was 4.x).
    assert bus["autoCompleteMessages"] is True
    assert bus["maxConcurrentCalls"] >= 1 and bus["prefetchCount"] >= 0
    assert re.fullmatch(r"\d\d:\d\d:\d\d", bus["maxAutoLockRenewalDuration"])
    assert "messageHandlerOptions" not in bus


def test_routes_are_relative_to_route_prefix() -> None:
    source = (ROOT / "functions" / "webhooks.py").read_text(encoding="utf-8")
    routes = re.findall(r'route="([^"]+)"', source)
    assert routes and not any(r.startswith(("/", "api/")) for r in routes)


def test_the_orchestrator_names_the_host_json_key_that_is_there() -> None:
    """Issue 9: its docstring named ``messageHandlerOptions.autoComplete`` (Functions v2 style)."""
    doc = (ROOT / "functions" / "orchestrator.py").read_text(encoding="utf-8")
    named = re.findall(r"host\.json:\s*``([A-Za-z.]+): (true|false)``", doc)
    assert named, "the orchestrator's docstring should say which host.json key completes messages"
    for path, value in named:
        node: Any = load("host.json")
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"host.json has no {path}"
            node = node[part]
        assert node is (value == "true")
