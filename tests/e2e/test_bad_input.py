"""(c) Bad input over HTTP on a running host: clear errors, nothing enqueued, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.flows.loader import FlowsFileError
from shared.host.runtime import LocalHost
from shared.local.azurite import port_open
from shared.settings import Settings
from tests.e2e.conftest import DEVOPS_USER, basic_auth, get, post

EG = "/runtime/webhooks/EventGrid?functionName=blob_created"


def assert_nothing_enqueued(host: LocalHost) -> None:
    services = host.services
    assert services is not None
    assert services.queue.depth() == 0  # type: ignore[attr-defined]
    assert services.store.list_runs() == []


FLOWS = """\
flows:
  nightly:
    triggers:
      - kind: manual
      - kind: blob
        container: landing
        suffix: .csv
      - kind: azure_devops
        events: [git.push]
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
"""


@pytest.fixture
def idle_host(e2e_settings: Settings, tmp_path: Path) -> LocalHost:
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS, encoding="utf-8")
    # no workers: whatever a request enqueued would stay on the queue to be counted
    host = LocalHost(e2e_settings.with_overrides(flows_file=flows), workers=0, watch=False, schedule=False).start()
    yield host  # type: ignore[misc]
    host.stop()


def test_host_status(idle_host: LocalHost) -> None:
    assert get(f"{idle_host.url}/admin/host/status") == (200, {"state": "Running"})


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (EG, b'[{"id": "1", "eventType": ', {"aeg-event-type": "Notification"}),
        (EG, b"[]", {"aeg-event-type": "Notification"}),
        (
            EG,
            b'[{"id": "1", "eventType": "Microsoft.Storage.BlobCreated", "subject": "x", "data": {}}]',
            {"aeg-event-type": "Notification"},
        ),
        (EG, b"[{}]", {}),
        ("/api/events/blob", b"{{{{", {"aeg-event-type": "Notification"}),
    ],
)
def test_malformed_event_grid_is_400_json(
    idle_host: LocalHost, path: str, body: bytes, headers: dict[str, str]
) -> None:
    status, doc = post(idle_host.url + path, body, headers)
    assert status == 400, doc
    assert isinstance(doc, dict) and doc["error"]["message"]
    assert_nothing_enqueued(idle_host)


def test_unknown_event_grid_function_is_404(idle_host: LocalHost) -> None:
    status, doc = post(
        f"{idle_host.url}/runtime/webhooks/EventGrid?functionName=nope", b"[{}]", {"aeg-event-type": "Notification"}
    )
    assert status == 404 and doc["error"]
    assert_nothing_enqueued(idle_host)


def test_subscription_validation_handshake(idle_host: LocalHost) -> None:
    body = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "subject": "",
            "eventTime": "2024-05-01T00:00:00Z",
            "dataVersion": "1",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        }
    ]
    status, doc = post(idle_host.url + EG, body, {"aeg-event-type": "SubscriptionValidation"})
    assert (status, doc) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    assert_nothing_enqueued(idle_host)


@pytest.mark.parametrize("auth", [None, basic_auth(DEVOPS_USER, "wrong-password"), basic_auth("someone", "x")])
def test_wrong_devops_credentials_are_401(idle_host: LocalHost, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    status, doc = post(f"{idle_host.url}/api/hooks/azure-devops", {"id": "n1", "eventType": "git.push"}, headers)
    assert status == 401, doc
    assert doc["error"]["message"]
    assert "wrong-password" not in str(doc)
    assert_nothing_enqueued(idle_host)


def test_unknown_flow_is_404(idle_host: LocalHost) -> None:
    status, doc = post(f"{idle_host.url}/api/flows/no-such-flow/runs", {"params": {}})
    assert status == 404, doc
    assert "no-such-flow" in doc["error"]["message"]
    status, doc = get(f"{idle_host.url}/api/runs/0123456789abcdef")
    assert status == 404
    assert_nothing_enqueued(idle_host)


def test_invalid_flows_file_keeps_the_host_down(e2e_settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "flows.yaml"
    bad.write_text(
        "flows:\n  broken:\n    triggers: []\n    steps:\n      - name: a\n        kind: batch\n", encoding="utf-8"
    )
    host = LocalHost(e2e_settings.with_overrides(flows_file=bad), workers=0)
    with pytest.raises(FlowsFileError) as err:
        host.start()
    report = str(err.value)
    assert f"{bad}:3:" in report and "flows.broken.triggers" in report
    assert f"{bad}:6:" in report or f"{bad}:5:" in report  # the batch step without params
    assert not port_open("127.0.0.1", e2e_settings.host_port)
    assert host.server is None and host.workers is None
