"""Which sinks the settings give, and the new settings' parsing (no network: nothing is sent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ValidationError
from shared.events.eventgrid_topic import EventGridTopicSink
from shared.events.log import EventLogSink
from shared.events.publisher import LifecycleEvents
from shared.events.webhooks import WebhookSink
from shared.settings import Settings
from shared.wiring import Services
from tests.fakes import MemoryRunStore


def test_sinks_follow_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Token:
        def get_token(self, *scopes: str, **kwargs: object) -> object:
            raise AssertionError("nothing is sent in this test")

    monkeypatch.setattr("shared.azure_identity.get_credential", lambda settings, client_id=None: Token())
    env = {
        "CONVEYOR_HOME": str(tmp_path),
        "CONVEYOR_EVENTS_TOPIC_ENDPOINT": "https://conveyor.westeurope-1.eventgrid.azure.net/api/events",
        "CONVEYOR_EVENTS_WEBHOOKS": "http://127.0.0.1:9/a, https://example.test/b?sig=x,,http://127.0.0.1:9/a",
        "WEBSITE_HOSTNAME": "conveyor-app.azurewebsites.net",
    }
    events = LifecycleEvents.from_settings(Settings.from_env(env), background=False)
    assert events is not None
    kinds = [type(s) for s in events.sinks.values()]
    assert kinds == [EventGridTopicSink, WebhookSink, WebhookSink, EventLogSink]
    hooks = [s for s in events.sinks.values() if isinstance(s, WebhookSink)]
    assert [h.url for h in hooks] == ["http://127.0.0.1:9/a", "https://example.test/b?sig=x"]
    assert {h.origin for h in hooks} == {"conveyor-app.azurewebsites.net"}
    assert len(set(events.sinks)) == 4  # stable, distinct names (the outbox remembers them)
    bad = Settings.from_env(
        {
            "CONVEYOR_HOME": str(tmp_path),
            "CONVEYOR_EVENTS_TOPIC_ENDPOINT": "http://plain.example/api/events",
            "CONVEYOR_EVENTS_WEBHOOKS": "ftp://nope,http://127.0.0.1:9/ok",
        }
    )
    kept = LifecycleEvents.from_settings(bad, background=False)  # logged and left out: runs go on
    assert kept is not None and [type(s) for s in kept.sinks.values()] == [WebhookSink, EventLogSink]
    azure = Settings.from_env({"CONVEYOR_MODE": "azure", "CONVEYOR_STORAGE_CONNECTION": "UseDevelopmentStorage=true"})
    assert LifecycleEvents.from_settings(azure) is None  # no sink configured: no events


def test_services_give_no_events_over_a_test_double_store(tmp_path: Path) -> None:
    assert Services(Settings(home=tmp_path), store=MemoryRunStore()).events is None


def test_retention_and_event_settings_parse_and_name_the_setting() -> None:
    s = Settings.from_env({})
    assert (s.retention_days, s.retention_statuses, s.retention_schedule) == (
        30,
        ("succeeded", "failed", "cancelled"),
        "0 0 3 * * *",
    )
    assert s.events_topic_endpoint is None and s.events_webhooks == ()
    custom = Settings.from_env(
        {
            "CONVEYOR_RETENTION_DAYS": "0",
            "CONVEYOR_RETENTION_STATUSES": "failed",
            "CONVEYOR_RETENTION_SCHEDULE": "0 30 1 * * *",
        }
    )
    assert (custom.retention_days, custom.retention_statuses, custom.retention_schedule) == (
        0,
        ("failed",),
        "0 30 1 * * *",
    )
    for bad in ("-1", "soon"):
        with pytest.raises(ValidationError) as err:
            Settings.from_env({"CONVEYOR_RETENTION_DAYS": bad})
        assert err.value.field == "CONVEYOR_RETENTION_DAYS"
